"""Real sample files built here: PDFs (clean and with active content), JPEG, PNG, DICOM."""

from __future__ import annotations

import io

import pikepdf
import pydicom
from PIL import Image
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid


def pdf(extra: bytes = b"", *, pages: int = 1) -> bytes:
    document = pikepdf.new()
    for _ in range(pages):
        document.add_blank_page()
    if extra:
        document.pages[0].Contents = document.make_stream(b"BT /F1 12 Tf (" + extra + b") Tj ET")
    out = io.BytesIO()
    document.save(out, compress_streams=False)
    return out.getvalue()


def pdf_with_javascript() -> bytes:
    document = pikepdf.new()
    document.add_blank_page()
    action = pikepdf.Dictionary(S=pikepdf.Name.JavaScript, JS=pikepdf.String("app.alert('x')"))
    document.Root.OpenAction = document.make_indirect(action)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def pdf_with_launch_action() -> bytes:
    document = pikepdf.new()
    document.add_blank_page()
    launch = pikepdf.Dictionary(S=pikepdf.Name.Launch, F=pikepdf.String("cmd.exe"))
    document.pages[0].obj.AA = pikepdf.Dictionary(O=document.make_indirect(launch))
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def pdf_with_embedded_file() -> bytes:
    document = pikepdf.new()
    document.add_blank_page()
    document.attachments["payload.exe"] = pikepdf.AttachedFileSpec(  # type: ignore[call-arg]
        document, b"MZ\x90\x00payload"
    )
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


def image(kind: str, size: tuple[int, int] = (32, 24)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(out, format=kind)
    return out.getvalue()


def dicom(preamble: bytes = b"\0" * 128) -> bytes:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID("1.2.840.10008.5.1.4.1.1.2")  # CT image storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset = FileDataset("scan.dcm", {}, file_meta=meta, preamble=preamble)
    dataset.SOPClassUID = meta.MediaStorageSOPClassUID
    dataset.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    dataset.PatientID = "PSEUDO-1"
    dataset.Modality = "CT"
    out = io.BytesIO()
    pydicom.dcmwrite(out, dataset, enforce_file_format=True)
    return out.getvalue()
