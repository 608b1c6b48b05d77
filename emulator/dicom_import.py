"""DICOM P10 files → HealthImaging image-set metadata documents (pydicom does the reading)."""

from __future__ import annotations

import base64
import hashlib
import zlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.multival import MultiValue

from emulator.dicom_levels import Level, canonical_key, is_multi_valued, level_of

SCHEMA_VERSION = "1.1"
_NUMERIC_VRS = frozenset({"US", "SS", "UL", "SL", "FL", "FD", "UV", "SV"})
_BINARY_VRS = frozenset({"OB", "OW", "OF", "OD", "OL", "OV", "UN"})
_PIXEL_DATA = 0x7FE00010

Document = dict[str, Any]


class ImportProblem(Exception):
    """The input holds no readable DICOM instance."""


def read_instances(paths: Iterable[Path]) -> list[Dataset]:
    """Every readable DICOM P10 file under the given files and folders (others are skipped)."""
    datasets = [ds for path in _walk(paths) if (ds := _read(path)) is not None]
    if not datasets:
        raise ImportProblem("no DICOM instances found")
    return datasets


def _walk(paths: Iterable[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            yield path
        else:
            raise ImportProblem(f"no such file or folder: {path}")


def _read(path: Path) -> Dataset | None:
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError):
        return None
    return ds if "StudyInstanceUID" in ds and "SOPInstanceUID" in ds else None


def group_by_study(datasets: Iterable[Dataset]) -> dict[str, list[Dataset]]:
    """All instances of one StudyInstanceUID form one image set."""
    studies: dict[str, list[Dataset]] = {}
    for ds in datasets:
        studies.setdefault(str(ds.StudyInstanceUID), []).append(ds)
    return studies


def build_document(datasets: Sequence[Dataset]) -> Document:
    """The Patient / Study / Series{uid} / Instances{uid} document HealthImaging writes."""
    doc: Document = {
        "SchemaVersion": SCHEMA_VERSION,
        "Patient": {"DICOM": {}},
        "Study": {"DICOM": {}, "Series": {}},
    }
    for ds in datasets:
        _add_instance(doc, ds)
    return doc


def _add_instance(doc: Document, ds: Dataset) -> None:
    levels: dict[Level, dict[str, Any]] = {level: {} for level in Level}
    vrs: dict[str, str] = {}
    for elem in _elements(ds):
        key = canonical_key(elem.tag)
        levels[level_of(key)][key] = element_value(elem)
        if elem.tag.is_private:
            vrs[key] = elem.VR
    _merge_first(doc["Patient"]["DICOM"], levels[Level.PATIENT])
    _merge_first(doc["Study"]["DICOM"], levels[Level.STUDY])
    series_uid = str(ds.get("SeriesInstanceUID", ""))
    series = doc["Study"]["Series"].setdefault(series_uid, {"DICOM": {}, "Instances": {}})
    _merge_first(series["DICOM"], levels[Level.SERIES])
    instance: dict[str, Any] = {"DICOM": levels[Level.INSTANCE]}
    if vrs:
        instance["DICOMVRs"] = vrs
    instance["StoredTransferSyntaxUID"] = _transfer_syntax(ds)
    instance["ImageFrames"] = _image_frames(ds)
    series["Instances"][str(ds.SOPInstanceUID)] = instance


def _elements(ds: Dataset) -> Iterator[DataElement]:
    if ds.file_meta is not None:
        yield from ds.file_meta
    yield from ds


def _merge_first(target: dict[str, Any], values: dict[str, Any]) -> None:
    """The first instance of a study/series decides its study/series-level values."""
    for key, value in values.items():
        target.setdefault(key, value)


def element_value(elem: DataElement) -> Any:
    """One element's value as HealthImaging writes it in JSON."""
    if elem.tag == _PIXEL_DATA or elem.is_empty:
        return None
    if elem.VR == "SQ":
        return [dataset_values(item) for item in elem.value]
    if elem.VR in _BINARY_VRS:
        raw = elem.value if isinstance(elem.value, bytes) else bytes(elem.value)
        return base64.b64encode(raw).decode()
    values = list(elem.value) if isinstance(elem.value, MultiValue) else [elem.value]
    converted = [_scalar(elem.VR, v) for v in values]
    if len(converted) == 1 and not (is_multi_valued(elem.tag) and not elem.tag.is_private):
        return converted[0]
    return converted


def dataset_values(ds: Dataset) -> dict[str, Any]:
    return {canonical_key(elem.tag): element_value(elem) for elem in ds}


def _scalar(vr: str, value: Any) -> Any:
    if vr in _NUMERIC_VRS:
        return value
    if vr == "AT":
        return f"{int(value):08X}"
    return str(value)


def _transfer_syntax(ds: Dataset) -> str:
    meta = ds.file_meta
    return str(meta.TransferSyntaxUID) if meta is not None and "TransferSyntaxUID" in meta else ""


def _image_frames(ds: Dataset) -> list[dict[str, Any]]:
    """Read-only frame descriptors; IDs are stable hashes so re-imports are reproducible."""
    if "PixelData" not in ds:
        return []
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    pixels = bytes(ds.PixelData)
    size = len(pixels) // frames
    rows, cols = int(ds.get("Rows", 0)), int(ds.get("Columns", 0))
    return [
        _frame(str(ds.SOPInstanceUID), i, pixels[i * size : (i + 1) * size], rows, cols)
        for i in range(frames)
    ]


def _frame(sop_uid: str, index: int, data: bytes, rows: int, cols: int) -> dict[str, Any]:
    frame_id = hashlib.md5(f"{sop_uid}/{index}".encode(), usedforsecurity=False).hexdigest()
    return {
        "ID": frame_id,
        "PixelDataChecksumFromBaseToFullResolution": [
            {"Width": cols, "Height": rows, "Checksum": zlib.crc32(data)}
        ],
        "FrameSizeInBytes": len(data),
    }
