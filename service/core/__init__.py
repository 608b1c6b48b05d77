"""The pure core: the value types every stage passes forward (`model`), the domain error tree
(`errors`, no grpc), and the one typed settings tree (`config`) with its TOML loader
(`config_loader`). Imports no grpc, aiohttp, aiobotocore or redis (import-linter checks it).
"""
