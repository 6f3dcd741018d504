"""Documents: streamed upload (never whole in memory), type by content, structural checks,
malware scan with quarantine, per-object encryption into the object store, verified
download, postal documents, flags and replacements (CASE-04, CASE-06, SEC-07, ACC-03).

Upload pipeline: the bytes are spooled to a private scratch file while the size limit,
the declared size and the type (first 132 bytes) are checked; the file is then checked
structurally (pikepdf, pydicom, Pillow) and scanned; it is encrypted into the store under
a random key; the row, its log entry and the idempotency record commit together. Any
failure on the way deletes the scratch file and the object: nothing half-done remains.

Rights-request answers (GDPR-01, GDPR-05): the platform (a `platform_services` service:
the lifecycle worker) stores the export archive (a zip) as an account-level document of
the person it answers (`subject_account_id`). It is theirs like a proof they uploaded:
`uploaded_by_account_id` is the person, `source` PLATFORM, sealed under the person's own
key (a purge crypto-shreds it), scanned like any upload. Only that person reads it; the
uploader is the CREATE entry's actor in the access log.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import tempfile
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path

import grpc
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.dossier.domain import accesslog
from services.dossier.domain.access import AccessPolicy, AccessRefused, CaseAccess, Need
from services.dossier.domain.accesslog import Action, ObjectKind, Purpose
from services.dossier.domain.crypto import (
    CryptoError,
    EncryptedObjectHeader,
    Keyring,
    MasterKeyRef,
    decrypt_stream,
    encrypt_stream,
    new_data_key,
    unwrap_for_subject,
    wrap_for_subject,
)
from services.dossier.domain.filetypes import (
    ANSWER_TYPES,
    SNIFF_BYTES,
    UPLOAD_TYPES,
    ContentType,
    check_structure,
    sniff,
)
from services.dossier.domain.gate import Gate
from services.dossier.domain.scan import MalwareScanner, ScannerUnavailable
from services.dossier.models import Document, IdempotencyRecord, Message
from services.shared.auth import Principal, Role
from services.shared.db import utcnow
from services.shared.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ServiceError,
)
from services.shared.idempotency import _recall, check_key, request_fingerprint, run_once
from services.shared.objectstore import ObjectStore

log = logging.getLogger(__name__)

MAX_CHUNK = 1024 * 1024
READ_CHUNK = 1024 * 1024
# A rights-request answer holds every file of the person (each within the upload limit):
# its own, larger limit (never below the upload limit).
MAX_ANSWER_BYTES = 2 * 1024 * 1024 * 1024
MAX_SUBJECT_ID = 36
UNSUPPORTED_UPLOAD = "unsupported document type: PDF, JPEG, PNG or DICOM (checked by content)"
UNSUPPORTED_ANSWER = "a rights-request answer is a zip archive or a PDF (checked by content)"


class DataLoss(ServiceError):
    status = grpc.StatusCode.DATA_LOSS


class DocumentPurpose(StrEnum):
    MEDICAL_RECORD = "medical_record"
    PROOF_OF_REPRESENTATION = "proof_of_representation"
    MANDATE = "mandate"
    MINOR_CONSENT = "minor_consent"
    MESSAGE_ATTACHMENT = "message_attachment"
    REPORT = "report"
    IDENTITY_PROOF = "identity_proof"
    RIGHTS_REQUEST_ANSWER = "rights_request_answer"


class DocumentStatus(StrEnum):
    QUARANTINED = "quarantined"
    AVAILABLE = "available"
    REJECTED = "rejected"
    FLAGGED = "flagged"
    REPLACED = "replaced"


class DocumentSource(StrEnum):
    UPLOAD = "upload"
    POSTAL_MAIL = "postal_mail"
    DOCTOR_UPLOAD = "doctor_upload"
    STAFF_UNDER_MANDATE = "staff_under_mandate"
    # Produced by the platform for the person who owns it (a rights-request answer).
    PLATFORM = "platform"


class FlagReason(StrEnum):
    UNREADABLE = "unreadable"
    INCOMPLETE = "incomplete"


# What each side may upload to a case; account-level proofs have no case (ACC-03).
FILER_CASE_PURPOSES = frozenset(
    {
        DocumentPurpose.MEDICAL_RECORD,
        DocumentPurpose.MESSAGE_ATTACHMENT,
        DocumentPurpose.PROOF_OF_REPRESENTATION,
        DocumentPurpose.MANDATE,
        DocumentPurpose.MINOR_CONSENT,
    }
)
DOCTOR_PURPOSES = frozenset({DocumentPurpose.REPORT, DocumentPurpose.MESSAGE_ATTACHMENT})
ACCOUNT_PURPOSES = frozenset(
    {
        DocumentPurpose.PROOF_OF_REPRESENTATION,
        DocumentPurpose.MANDATE,
        DocumentPurpose.MINOR_CONSENT,
        DocumentPurpose.IDENTITY_PROOF,
    }
)
DOWNLOADABLE = frozenset({DocumentStatus.AVAILABLE, DocumentStatus.FLAGGED, DocumentStatus.REPLACED})


@dataclass(frozen=True, slots=True)
class UploadRequest:
    """The metadata message of an upload (or postal addition), already decoded."""

    case_id: str
    purpose: DocumentPurpose
    file_name: str
    declared_size: int
    beneficiary_id: str = ""
    replaces_document_id: str = ""
    received_by_post_at: datetime | None = None
    # A rights-request answer the platform stores for this person (empty otherwise).
    subject_account_id: str = ""

    @property
    def rights_answer(self) -> bool:
        return bool(self.subject_account_id) or self.purpose is DocumentPurpose.RIGHTS_REQUEST_ANSWER


@dataclass(frozen=True, slots=True)
class Spooled:
    path: Path
    size: int
    sha256_hex: str
    content_type: ContentType


@dataclass(frozen=True, slots=True)
class DocumentAccess:
    """Access to one document: through its case, or as the owner of an account-level proof."""

    principal: Principal
    document: Document
    purpose: Purpose
    case_access: CaseAccess | None = None


class AnswerRefused(NotFound):
    """Someone other than its owner asked for a rights-request answer: NOT_FOUND, logged."""

    def __init__(self, document_id: str, owner: str) -> None:
        super().__init__("document not found")
        self.document_id = document_id
        self.owner = owner


async def visible_documents(
    session: AsyncSession, access: CaseAccess, after: str, limit: int
) -> list[Document]:
    """Documents of the case by id (ListDocuments' paging order), at most `limit`; shared
    with the case overview."""
    query = select(Document).where(Document.case_id == access.case.case_id)
    if access.purpose is Purpose.CASE_REVIEW:
        # Doctors never see malware-rejected files.
        query = query.where(Document.status != DocumentStatus.REJECTED.value)
    if after:
        query = query.where(Document.document_id > after)
    return list((await session.scalars(query.order_by(Document.document_id).limit(limit))).all())


class DocumentVault:
    def __init__(
        self,
        gate: Gate,
        store: ObjectStore,
        keyring: Keyring,
        scanner: MalwareScanner,
        *,
        max_bytes: int,
        scratch_dir: Path,
        chunk_bytes: int = 1024 * 1024,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        self.gate = gate
        self.store = store
        self._keyring = keyring
        self.scanner = scanner
        self.max_bytes = max_bytes
        self.max_answer_bytes = max(max_answer_bytes, max_bytes)
        self.scratch_dir = scratch_dir
        self.chunk_bytes = chunk_bytes
        scratch_dir.mkdir(parents=True, exist_ok=True, mode=0o700)

    @property
    def sessions(self) -> async_sessionmaker[AsyncSession]:
        return self.gate.sessions

    @property
    def keyring(self) -> Keyring:
        return self._keyring

    @keyring.setter
    def keyring(self, keyring: Keyring) -> None:
        """Master keys reloaded (rotation): subject keys unwrap with the same keyring."""
        self._keyring = keyring
        self.gate.keys.keyring = keyring

    @property
    def policy(self) -> AccessPolicy:
        return self.gate.policy

    # --- upload ---------------------------------------------------------------------
    def _need_and_source(
        self, principal: Principal, upload: UploadRequest, postal: bool
    ) -> tuple[Need, DocumentSource]:
        if postal:
            return Need.COORDINATE, DocumentSource.POSTAL_MAIL
        if principal.role is Role.REFERENT_DOCTOR:
            if upload.purpose not in DOCTOR_PURPOSES:
                raise InvalidArgument("a doctor uploads report files or message attachments")
            return Need.REVIEW, DocumentSource.DOCTOR_UPLOAD
        if upload.purpose not in FILER_CASE_PURPOSES:
            raise InvalidArgument("this purpose cannot be uploaded to a case by the filer")
        if principal.role is Role.COORDINATOR:
            return Need.FILL_IN, DocumentSource.STAFF_UNDER_MANDATE
        return Need.FILL_IN, DocumentSource.UPLOAD

    def _limit(self, upload: UploadRequest) -> int:
        return self.max_answer_bytes if upload.rights_answer else self.max_bytes

    def _check_metadata(self, upload: UploadRequest) -> None:
        if upload.declared_size <= 0:
            raise InvalidArgument(
                "declared_size_bytes must be given and above zero (empty files are refused)"
            )
        if upload.declared_size > self._limit(upload):
            raise InvalidArgument(f"the document is over the {self._limit(upload)}-byte limit")

    def _answer_subject(self, principal: Principal, upload: UploadRequest, postal: bool) -> str:
        """A rights-request answer: stored by the platform for the person it answers, as an
        account-level document of theirs. Returns that person."""
        if not self.policy.platform(principal):
            raise PermissionDenied("only the platform stores a rights-request answer for a person")
        if upload.purpose is not DocumentPurpose.RIGHTS_REQUEST_ANSWER:
            raise InvalidArgument("subject_account_id is for rights-request answers only")
        subject = upload.subject_account_id
        if not subject or len(subject) > MAX_SUBJECT_ID or not subject.isprintable():
            raise InvalidArgument(
                "subject_account_id is required for a rights-request answer (an account id)"
            )
        if upload.case_id or postal or upload.beneficiary_id or upload.replaces_document_id:
            raise InvalidArgument(
                "a rights-request answer is an account-level document: no case, beneficiary or replacement"
            )
        return subject

    async def upload(
        self,
        principal: Principal,
        first_message: object,
        upload: UploadRequest,
        chunks: AsyncIterator[bytes],
        *,
        postal: bool = False,
    ) -> str:
        """Store a document; returns its id (the first result again on a replayed key)."""
        from google.protobuf.message import Message as ProtoMessage

        assert isinstance(first_message, ProtoMessage)
        operation = f"{'AddPostalDocument' if postal else 'UploadDocument'}:{principal.subject}"
        check_key(getattr(first_message, "idempotency_key", ""))
        self._check_metadata(upload)
        if upload.rights_answer:
            subject = self._answer_subject(principal, upload, postal)
            need, source = Need.PLATFORM, DocumentSource.PLATFORM
            await self.gate.keys.ensure(subject)
        elif upload.case_id:
            need, source = self._need_and_source(principal, upload, postal)
            subject = await self.gate.check(principal, upload.case_id, need)
        else:
            if principal.role is not Role.PATIENT or upload.purpose not in ACCOUNT_PURPOSES or postal:
                raise InvalidArgument("only proofs of representation or identity may have no case")
            need, source = Need.FILL_IN, DocumentSource.UPLOAD
            subject = principal.subject
            await self.gate.keys.ensure(subject)
        async with self.sessions() as session:
            previous = await _recall(
                session, IdempotencyRecord, first_message.idempotency_key,  # type: ignore[attr-defined]
                operation, request_fingerprint(first_message),
            )  # fmt: skip
        if previous is not None:
            return previous

        document_id = str(uuid.uuid4())
        object_key = ""
        spooled: Spooled | None = None
        try:
            spooled = await self._spool(chunks, upload)
            await asyncio.to_thread(check_structure, spooled.content_type, spooled.path)
            try:
                verdict = await self.scanner.scan(_file_chunks(spooled.path))
                status = DocumentStatus.AVAILABLE if verdict.clean else DocumentStatus.REJECTED
                signature = verdict.signature
            except ScannerUnavailable:
                status, signature = DocumentStatus.QUARANTINED, ""
                log.warning("malware scanner unavailable", extra={"fields": {"document_id": document_id}})
            data_key = new_data_key()
            # The subject's key wraps the data key (crypto-shredding); the master key wraps it.
            ref = self.keyring.active
            wrapped = wrap_for_subject(data_key, document_id, subject)
            if status is not DocumentStatus.REJECTED:  # malware is never stored
                object_key = f"documents/{document_id}"
                header = EncryptedObjectHeader(document_id, ref, wrapped, self.chunk_bytes, subject)
                await self.store.put(object_key, encrypt_stream(_file_chunks(spooled.path), header, data_key))

            async def insert(session: AsyncSession) -> str:
                assert spooled is not None
                if upload.case_id:
                    access = await self.gate.resolve(session, principal, upload.case_id, need)
                    case = access.case
                    purpose = access.purpose
                elif upload.rights_answer:
                    case, purpose = None, Purpose.RIGHTS_REQUEST
                else:
                    case, purpose = None, Purpose.OWN_SPACE
                # The owner: the uploader, or the person a rights-request answer is for.
                owner = subject if upload.rights_answer else principal.subject
                replaced = None
                if upload.replaces_document_id:
                    replaced = await session.get(Document, upload.replaces_document_id, with_for_update=True)
                    if replaced is None or replaced.case_id != upload.case_id or not upload.case_id:
                        raise NotFound("document to replace not found")
                    if replaced.status != DocumentStatus.FLAGGED:
                        raise FailedPrecondition("only a flagged document can be replaced")
                document = Document(
                    document_id=document_id,
                    case_id=upload.case_id,
                    beneficiary_id=upload.beneficiary_id,
                    purpose=upload.purpose.value,
                    file_name=upload.file_name,
                    content_type=spooled.content_type.value,
                    size_bytes=spooled.size,
                    sha256_hex=spooled.sha256_hex,
                    status=status.value,
                    source=source.value,
                    uploaded_by_account_id=owner,
                    uploaded_at=utcnow(),
                    replaces_document_id=upload.replaces_document_id,
                    flag_reason="",
                    received_by_post_at=upload.received_by_post_at,
                    object_key=object_key,
                    wrapped_key=wrapped,
                    master_key_id=ref.key_id,
                    master_key_version=ref.version,
                    subject_key_id=subject,
                    scan_signature=signature,
                    scanned_at=utcnow() if status is not DocumentStatus.QUARANTINED else None,
                )
                session.add(document)
                if replaced is not None and status is not DocumentStatus.REJECTED:
                    replaced.status = DocumentStatus.REPLACED.value
                await session.flush()
                await accesslog.append(
                    session,
                    actor=principal,
                    action=Action.CREATE,
                    object_kind=ObjectKind.DOCUMENT,
                    object_id=document_id,
                    case=case,
                    purpose=purpose,
                    subject_account_id=owner,
                )
                return document_id

            result_id, replayed = await run_once(
                self.sessions, IdempotencyRecord, first_message, operation, insert
            )
        except BaseException as exc:
            if object_key:
                await _quietly_delete(self.store, object_key)
            if isinstance(exc, AccessRefused):
                await self.gate.log_refusal(principal, exc)
            raise
        finally:
            if spooled is not None:
                spooled.path.unlink(missing_ok=True)
        if replayed and object_key:  # a concurrent request with the same key won
            await _quietly_delete(self.store, object_key)
        log.info(
            "document stored",
            extra={"fields": {"document_id": result_id, "status": status.value, "case_id": upload.case_id}},
        )
        return result_id

    async def _spool(self, chunks: AsyncIterator[bytes], upload: UploadRequest) -> Spooled:
        declared, limit = upload.declared_size, self._limit(upload)
        allowed, unsupported = (
            (ANSWER_TYPES, UNSUPPORTED_ANSWER) if upload.rights_answer else (UPLOAD_TYPES, UNSUPPORTED_UPLOAD)
        )
        fd, name = tempfile.mkstemp(prefix="upload-", dir=self.scratch_dir)  # 0600
        path = Path(name)
        digest = hashlib.sha256()
        size = 0
        head = b""
        content_type: ContentType | None = None
        try:
            with os.fdopen(fd, "wb") as handle:
                async for chunk in chunks:
                    if len(chunk) > MAX_CHUNK:
                        raise InvalidArgument("chunks are at most 1 MiB")
                    size += len(chunk)
                    if size > limit:
                        raise InvalidArgument(f"the document is over the {limit}-byte limit")
                    if size > declared:
                        raise InvalidArgument("the stream carries more bytes than declared_size_bytes")
                    if content_type is None:
                        head = (head + chunk)[:SNIFF_BYTES]
                        content_type = sniff(head)
                        if content_type is not None and content_type not in allowed:
                            raise InvalidArgument(unsupported)
                        if content_type is None and len(head) >= SNIFF_BYTES:
                            raise InvalidArgument(unsupported)
                    digest.update(chunk)
                    await asyncio.to_thread(handle.write, chunk)
            if size == 0:
                raise InvalidArgument("the document is empty")
            if size != declared:
                raise InvalidArgument("the stream ended before declared_size_bytes: upload cut, try again")
            if content_type is None:
                raise InvalidArgument(unsupported)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            raise
        return Spooled(path, size, digest.hexdigest(), content_type)

    # --- read -----------------------------------------------------------------------
    async def _access(
        self, session: AsyncSession, principal: Principal, document_id: str, need: Need
    ) -> DocumentAccess:
        document = await session.get(Document, document_id) if document_id else None
        if document is None or document.archived_at is not None:
            raise NotFound("document not found")
        if document.case_id:
            access = await self.gate.resolve(session, principal, document.case_id, need)
            return DocumentAccess(principal, document, access.purpose, access)
        if principal.role is Role.PATIENT and principal.subject == document.uploaded_by_account_id:
            await self.gate.keys.load(session, document.uploaded_by_account_id)
            return DocumentAccess(principal, document, Purpose.OWN_SPACE)
        if document.purpose == DocumentPurpose.RIGHTS_REQUEST_ANSWER:
            # The person's whole file, for them alone (staff read the file itself, logged).
            raise AnswerRefused(document.document_id, document.uploaded_by_account_id)
        if need is Need.READ and self.policy.platform(principal):
            # The person's own proofs, in the export answering their access request.
            await self.gate.keys.load(session, document.uploaded_by_account_id)
            return DocumentAccess(principal, document, Purpose.PLATFORM_PROCESSING)
        if need is Need.READ and self.policy.health_data_habilitated(principal):
            await self.gate.keys.load(session, document.uploaded_by_account_id)
            return DocumentAccess(principal, document, Purpose.COORDINATION)
        raise NotFound("document not found")

    @staticmethod
    def _read_entry(access: DocumentAccess, action: Action) -> accesslog.PendingEntry:
        """A read of a document (metadata or download), logged through the group commit."""
        return accesslog.pending(
            actor=access.principal, action=action, object_kind=ObjectKind.DOCUMENT,
            object_id=access.document.document_id,
            case=access.case_access.case if access.case_access else None, purpose=access.purpose,
            subject_account_id=access.document.uploaded_by_account_id,
        )  # fmt: skip

    async def _log_answer_refusal(self, principal: Principal, refused: AnswerRefused) -> None:
        """A refused attempt on someone's rights-request answer is evidence too (best
        effort: the caller is refused whatever happens here)."""
        try:
            async with self.sessions.begin() as session:
                await accesslog.append(
                    session, actor=principal, action=Action.REFUSED, object_kind=ObjectKind.DOCUMENT,
                    object_id=refused.document_id, case=None, purpose=Purpose.NONE_ESTABLISHED,
                    subject_account_id=refused.owner,
                )  # fmt: skip
        except Exception:
            log.warning("refusal not logged", extra={"fields": {"document_id": refused.document_id}})

    async def get(self, principal: Principal, document_id: str) -> Document:
        try:
            async with self.sessions.begin() as session:
                access = await self._access(session, principal, document_id, Need.READ)
                entry = self._read_entry(access, Action.READ)
        except AnswerRefused as refused:
            await self._log_answer_refusal(principal, refused)
            raise NotFound("document not found") from None
        except AccessRefused as refused:
            await self.gate.log_refusal(principal, refused)
            raise NotFound("document not found") from None
        # The transaction wrote nothing; the entry commits (group commit) before any data leaves.
        await self.gate.read_log.append([entry])
        return access.document

    async def open_download(
        self, principal: Principal, document_id: str
    ) -> tuple[Document, AsyncIterator[bytes]]:
        """Checks and logs the download, then streams the verified plaintext."""
        try:
            async with self.sessions.begin() as session:
                access = await self._access(session, principal, document_id, Need.READ)
                document = access.document
                if document.status not in DOWNLOADABLE:
                    raise FailedPrecondition(
                        "the document is not available (quarantined until its malware scan is clean,"
                        " or rejected)"
                    )
                entry = self._read_entry(access, Action.DOWNLOAD)
        except AnswerRefused as refused:
            await self._log_answer_refusal(principal, refused)
            raise NotFound("document not found") from None
        except AccessRefused as refused:
            await self.gate.log_refusal(principal, refused)
            raise NotFound("document not found") from None
        await self.gate.read_log.append([entry])
        return document, self.plaintext(document)

    def data_key(self, document: Document) -> bytes:
        """The document's data key: under its subject's key (loaded for this request), or
        under the master key for documents stored before subject keys existed."""
        if document.subject_key_id:
            return unwrap_for_subject(document.wrapped_key, document.document_id, document.subject_key_id)
        return self.keyring.unwrap(
            document.wrapped_key,
            document.document_id,
            MasterKeyRef(document.master_key_id, document.master_key_version),
        )

    async def plaintext(self, document: Document, check_hash: bool = True) -> AsyncIterator[bytes]:
        try:
            data_key = self.data_key(document)
        except CryptoError as exc:
            log.error("document key unavailable", extra={"fields": {"document_id": document.document_id}})
            raise DataLoss("the document's key is not available") from exc
        digest = hashlib.sha256()
        size = 0
        try:
            async for chunk in decrypt_stream(
                self.store.get(document.object_key), document.document_id, data_key
            ):
                digest.update(chunk)
                size += len(chunk)
                for start in range(0, len(chunk), READ_CHUNK):
                    yield chunk[start : start + READ_CHUNK]
        except CryptoError as exc:
            log.error("document integrity failure", extra={"fields": {"document_id": document.document_id}})
            raise DataLoss("the stored document failed its integrity check") from exc
        if check_hash and (digest.hexdigest() != document.sha256_hex or size != document.size_bytes):
            log.error("document hash mismatch", extra={"fields": {"document_id": document.document_id}})
            raise DataLoss("the stored document does not match its recorded SHA-256")

    async def list_for_case(
        self, principal: Principal, case_id: str, after: str, limit: int
    ) -> list[Document]:
        """A page of the case's documents (metadata only), by upload time: one read entry
        for the listing (the case as object id), through the group commit."""
        async with self.gate.read(principal, case_id) as (session, access, reads):
            documents = await visible_documents(session, access, after, limit)
            reads.add(access, ObjectKind.DOCUMENT, case_id)
        return sorted(documents, key=lambda d: d.uploaded_at)

    # --- doctor's flag ----------------------------------------------------------------
    async def flag(self, principal: Principal, request: object, document_id: str, reason: FlagReason) -> str:
        from google.protobuf.message import Message as ProtoMessage

        assert isinstance(request, ProtoMessage)
        async with self.sessions() as session:
            document = await session.get(Document, document_id) if document_id else None
        if document is None or not document.case_id:
            raise NotFound("document not found")

        async def run(session: AsyncSession, access: CaseAccess) -> str:
            target = await session.get(Document, document_id, with_for_update=True)
            assert target is not None
            if target.status not in (DocumentStatus.AVAILABLE, DocumentStatus.FLAGGED):
                raise FailedPrecondition("only an available document can be flagged")
            target.status = DocumentStatus.FLAGGED.value
            target.flag_reason = reason.value
            # The flag asks the patient for a new copy in the thread (CASE-06).
            message_id = str(uuid.uuid4())
            text = {
                FlagReason.UNREADABLE: "Document illisible : merci d'en envoyer une nouvelle copie.",
                FlagReason.INCOMPLETE: "Document incomplet : merci d'en envoyer une copie complète.",
            }[reason]
            session.add(
                Message(
                    message_id=message_id,
                    case_id=target.case_id,
                    sender_account_id=principal.subject,
                    sender_role=principal.role.value,
                    kind="document_request",
                    body_sealed=self.keyring.seal_text(
                        text, f"messages:{message_id}", access.case.filer_account_id
                    ),
                    attachment_document_ids=[document_id],
                    in_reply_to_message_id="",
                    sent_at=utcnow(),
                    hidden=False,
                )
            )
            await session.flush()
            await accesslog.append(
                session, actor=principal, action=Action.UPDATE, object_kind=ObjectKind.DOCUMENT,
                object_id=document_id, case=access.case, purpose=access.purpose,
            )  # fmt: skip
            return document_id

        result, _ = await self.gate.write(
            principal, request, "FlagDocument", document.case_id, Need.REVIEW, run
        )
        return result

    # --- quarantine -----------------------------------------------------------------
    async def rescan_quarantined(self, limit: int = 20) -> int:
        """Scan quarantined documents again; returns how many got a verdict."""
        platform = Principal("dossier", Role.SERVICE, "", "dossier", "rescan", 0.0)
        async with self.sessions() as session:
            pending = list(
                (
                    await session.scalars(
                        select(Document)
                        .where(Document.status == DocumentStatus.QUARANTINED.value)
                        .order_by(Document.uploaded_at)
                        .limit(limit)
                    )
                ).all()
            )
        done = 0
        for document in pending:
            if document.subject_key_id:
                async with self.sessions() as session:
                    await self.gate.keys.load(session, document.subject_key_id)
            try:
                verdict = await self.scanner.scan(self.plaintext(document))
            except ScannerUnavailable:
                return done
            async with self.sessions.begin() as session:
                row = await session.get(Document, document.document_id, with_for_update=True)
                if row is None or row.status != DocumentStatus.QUARANTINED.value:
                    continue
                row.status = (DocumentStatus.AVAILABLE if verdict.clean else DocumentStatus.REJECTED).value
                row.scan_signature = verdict.signature
                row.scanned_at = utcnow()
                from services.dossier.models import Case

                case = await session.get(Case, row.case_id) if row.case_id else None
                await accesslog.append(
                    session, actor=platform, action=Action.READ, object_kind=ObjectKind.DOCUMENT,
                    object_id=row.document_id, case=case, purpose=Purpose.PLATFORM_PROCESSING,
                    subject_account_id=row.uploaded_by_account_id,
                )  # fmt: skip
                key = row.object_key
                if not verdict.clean:
                    row.object_key = ""
            if not verdict.clean and key:
                await _quietly_delete(self.store, key)  # malware: the object is destroyed
            done += 1
        return done

    async def delete_objects(self, keys: list[str]) -> list[str]:
        """Delete objects (purge); returns the keys the store could not delete."""
        left: list[str] = []
        for key in keys:
            try:
                await self.store.delete(key)
            except Exception:
                log.warning("object not deleted", extra={"fields": {"object_key": key}})
                left.append(key)
        return left

    # --- master-key rotation ----------------------------------------------------------
    async def rewrap_keys(self, batch: int = 200) -> int:
        """Re-wrap every data key not under the active master key (subject keys, and the
        data keys of older documents wrapped by the master key); objects are untouched."""
        active = self.keyring.active
        count = await self.gate.keys.rewrap(batch)
        while True:
            async with self.sessions.begin() as session:
                rows = (
                    await session.scalars(
                        select(Document)
                        .where(
                            Document.subject_key_id == "",
                            (Document.master_key_id != active.key_id)
                            | (Document.master_key_version != active.version),
                        )
                        .limit(batch)
                    )
                ).all()
                for row in rows:
                    ref, wrapped = self.keyring.rewrap(
                        row.wrapped_key,
                        row.document_id,
                        MasterKeyRef(row.master_key_id, row.master_key_version),
                    )
                    row.wrapped_key, row.master_key_id, row.master_key_version = (
                        wrapped,
                        ref.key_id,
                        ref.version,
                    )
                count += len(rows)
            if len(rows) < batch:
                return count


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    with path.open("rb") as handle:
        while chunk := await asyncio.to_thread(handle.read, READ_CHUNK):
            yield chunk


async def _quietly_delete(store: ObjectStore, key: str) -> None:
    with contextlib.suppress(Exception):
        await store.delete(key)
