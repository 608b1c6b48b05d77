"""botocore's data for AWS HealthImaging (`medical-imaging` 2023-07-19), for proxy and emulator.

aioboto3 pins a botocore whose model predates `includeStudyImageSets`; this newer model is put
first on botocore's data path (`DATA_PATH`) until aioboto3 moves. One copy serves both the
proxy's adapter and the emulator, which shares no code with the proxy but the same model.
"""

from pathlib import Path

DATA_PATH = Path(__file__).parent / "data"
