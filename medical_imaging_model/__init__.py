"""botocore's data for AWS HealthImaging (`medical-imaging` 2023-07-19), for proxy and emulator.

aioboto3 pins a botocore whose model predates `includeStudyImageSets`; this newer model is put
first on botocore's data path (`DATA_PATH`) until aioboto3 moves. One copy serves both the
proxy's adapter and the emulator, which shares no code with the proxy but the same model.
"""

from pathlib import Path
from typing import Any

DATA_PATH = Path(__file__).parent / "data"


def install(botocore_session: Any) -> None:
    """Put this model first on a botocore session's data path (boto3/aioboto3: `session._session`,
    a botocore `Session` itself otherwise), so its clients know `includeStudyImageSets`."""
    botocore_session.get_component("data_loader").search_paths.insert(0, str(DATA_PATH))
