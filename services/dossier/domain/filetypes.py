"""Document types by content (magic bytes), never by name, and structural checks:
PDFs with active content are refused (pikepdf), DICOM must parse (pydicom), images must
decode their headers (Pillow), a zip (rights-request answers only, see `ANSWER_TYPES`)
must list cleanly with bare relative entry names and no encrypted entry."""

from __future__ import annotations

import re
import unicodedata
from enum import StrEnum
from pathlib import Path

from services.shared.errors import InvalidArgument

SNIFF_BYTES = 132
MAX_FILE_NAME = 255


class ContentType(StrEnum):
    PDF = "pdf"
    JPEG = "jpeg"
    PNG = "png"
    DICOM = "dicom"
    # The export archive answering an access or portability request; no other upload.
    ZIP = "zip"


# What a person's uploads may be (the message every refusal gives names them).
UPLOAD_TYPES = frozenset({ContentType.PDF, ContentType.JPEG, ContentType.PNG, ContentType.DICOM})
# A rights-request answer: the export archive, or a letter.
ANSWER_TYPES = frozenset({ContentType.ZIP, ContentType.PDF})
ZIP_MAGIC = b"PK\x03\x04"
# An archive the platform produced lists far fewer entries; more is refused unread.
MAX_ZIP_ENTRIES = 100_000


# Executable or archive signatures refused in a DICOM preamble (polyglot files).
DANGEROUS_PREAMBLES = (b"MZ", b"\x7fELF", b"#!", b"PK\x03\x04", b"%PDF")


def sniff(head: bytes) -> ContentType | None:
    """The type from the first bytes; None while undecidable or unknown."""
    if head.startswith(b"%PDF-"):
        return ContentType.PDF
    if head.startswith(b"\xff\xd8\xff"):
        return ContentType.JPEG
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return ContentType.PNG
    if len(head) >= SNIFF_BYTES and head[128:132] == b"DICM":
        return ContentType.DICOM
    if head.startswith(ZIP_MAGIC):
        return ContentType.ZIP
    return None


def sanitise_file_name(name: str) -> str:
    """The name as given, without path parts: path tricks are refused, not repaired."""
    name = unicodedata.normalize("NFC", name).strip()
    if not name:
        raise InvalidArgument("file_name is required")
    if len(name) > MAX_FILE_NAME:
        raise InvalidArgument(f"file_name is longer than {MAX_FILE_NAME} characters")
    if "/" in name or "\\" in name or name in {".", ".."} or name.startswith("..") or ":" in name:
        raise InvalidArgument("file_name must be a bare file name, without path parts")
    if any(unicodedata.category(char).startswith("C") for char in name):
        raise InvalidArgument("file_name contains control characters")
    if re.search(r"[\u202a-\u202e\u2066-\u2069]", name):
        raise InvalidArgument("file_name contains bidirectional override characters")
    return name


# --- structural checks (blocking: run in a thread) -----------------------------------

ACTIVE_KEYS = ("/JS", "/JavaScript", "/Launch", "/EmbeddedFile", "/EmbeddedFiles", "/RichMedia", "/XFA")
ACTIVE_ACTIONS = ("/JavaScript", "/Launch", "/ImportData", "/SubmitForm", "/RichMediaExecute", "/Rendition")


def check_pdf(path: Path) -> None:
    import pikepdf

    try:
        pdf = pikepdf.open(path)
    except pikepdf.PasswordError:
        raise InvalidArgument("encrypted PDFs are refused: their content cannot be checked") from None
    except Exception:  # untrusted input: any parser failure is a malformed file
        raise InvalidArgument("the PDF is malformed") from None
    with pdf:
        try:
            page_count = len(pdf.pages)
        except Exception:
            page_count = 0
        if page_count == 0:
            raise InvalidArgument("the PDF is malformed (no readable page)")
        if pdf.is_encrypted:
            raise InvalidArgument("encrypted PDFs are refused: their content cannot be checked")
        root = pdf.Root
        names = root.get("/Names")
        if names is not None and ("/JavaScript" in names or "/EmbeddedFiles" in names):
            raise InvalidArgument("PDFs with active content (JavaScript, embedded files) are refused")
        if "/AcroForm" in root and "/XFA" in root.AcroForm:
            raise InvalidArgument("PDFs with XFA forms are refused")
        for obj in pdf.objects:
            if not isinstance(obj, pikepdf.Dictionary | pikepdf.Stream):
                continue
            for key in ACTIVE_KEYS:
                if key in obj:
                    raise InvalidArgument(
                        "PDFs with active content (JavaScript, launch actions, embedded files) are refused"
                    )
            if obj.get("/S") in ACTIVE_ACTIONS or obj.get("/Type") == "/EmbeddedFile":
                raise InvalidArgument(
                    "PDFs with active content (JavaScript, launch actions, embedded files) are refused"
                )
            if obj.get("/Subtype") in ("/FileAttachment", "/Movie", "/Sound", "/Screen"):
                raise InvalidArgument("PDFs with file attachments or media annotations are refused")
            if "/AA" in obj or "/OpenAction" in obj:
                action = obj.get("/OpenAction") if "/OpenAction" in obj else obj.get("/AA")
                if not isinstance(action, pikepdf.Array):  # a destination array only moves the view
                    raise InvalidArgument("PDFs with active content (automatic actions) are refused")


def check_dicom(path: Path) -> None:
    import pydicom
    from pydicom.errors import InvalidDicomError

    with path.open("rb") as handle:
        preamble = handle.read(128)
    if preamble.startswith(DANGEROUS_PREAMBLES):
        raise InvalidArgument("the DICOM preamble carries an executable or archive signature")
    try:
        dataset = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, Exception):  # untrusted input: any parser failure refuses it
        raise InvalidArgument("the DICOM file does not parse") from None
    if "SOPClassUID" not in dataset and "SOPClassUID" not in dataset.file_meta:
        raise InvalidArgument("the DICOM file does not parse as an image object (no SOP class)")


def check_image(path: Path) -> None:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image.verify()
    except (UnidentifiedImageError, Exception):  # untrusted input: any decoder failure refuses it
        raise InvalidArgument("the image does not decode") from None


def check_zip(path: Path) -> None:
    """The central directory lists cleanly; entry names are bare relative paths (nothing
    that would write outside a folder when unpacked); no entry is encrypted (its content
    could not be scanned)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, Exception):  # untrusted input: any parser failure refuses it
        raise InvalidArgument("the zip archive is malformed") from None
    if not entries:
        raise InvalidArgument("the zip archive is empty")
    if len(entries) > MAX_ZIP_ENTRIES:
        raise InvalidArgument(f"the zip archive lists more than {MAX_ZIP_ENTRIES} entries")
    for entry in entries:
        name = entry.filename
        parts = name.split("/")
        if (
            not name
            or name.startswith("/")
            or "\\" in name
            or ":" in name
            or ".." in parts
            or not name.isprintable()
        ):
            raise InvalidArgument("the zip archive has an entry name with path tricks")
        if entry.flag_bits & 0x1:
            raise InvalidArgument("encrypted zip entries are refused: their content cannot be checked")


def check_structure(content_type: ContentType, path: Path) -> None:
    if content_type is ContentType.PDF:
        check_pdf(path)
    elif content_type is ContentType.DICOM:
        check_dicom(path)
    elif content_type is ContentType.ZIP:
        check_zip(path)
    else:
        check_image(path)
