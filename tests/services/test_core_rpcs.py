"""The RPCs the foundation implements, on SQLite and PostgreSQL (each run: fresh databases)."""

from __future__ import annotations

import grpc
import pytest
from secondopinion.billing.v1 import billing_pb2, billing_pb2_grpc
from secondopinion.dossier.v1 import dossier_pb2, dossier_pb2_grpc
from secondopinion.identity.v1 import identity_pb2, identity_pb2_grpc
from secondopinion.matching.v1 import matching_pb2, matching_pb2_grpc

from deploy.seed import with_luhn_digit
from services.shared.auth import Role, ServiceTokenProvider, TokenSigner
from services.shared.grpc_client import open_channel
from tests.support.stack import Stack


def sign_up(email: str, key: str, **overrides: object) -> identity_pb2.SignUpRequest:
    fields: dict[str, object] = {
        "idempotency_key": key,
        "email": email,
        "phone_number": "+33 6 12 34 56 78",
        "password": "Correct-Horse-9",
        "declared_age": 30,
        "locale": "fr",
    }
    fields.update(overrides)
    return identity_pb2.SignUpRequest(**fields)  # type: ignore[arg-type]


async def expect_status(call: object, code: grpc.StatusCode) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call  # type: ignore[misc]
    assert error.value.code() == code, error.value.details()
    return str(error.value.details())


@pytest.mark.req("ACC-02")
@pytest.mark.req("ACC-04")
async def test_sign_up_normalises_logins_and_applies_the_terms_rules(stack: Stack) -> None:
    async with open_channel(stack.target("identity"), stack.ops_tokens()) as channel:
        identity = identity_pb2_grpc.IdentityServiceStub(channel)
        created = await identity.SignUp(sign_up("Jane.Doe@Example.org", "k-1"))
        # Full-width and differently cased look-alike: the same login.
        full_width_jane = "\uff2a\uff21\uff2e\uff25.doe@example.ORG"
        again = await identity.SignUp(sign_up(full_width_jane, "k-2"))
        # Answered as a new email would be (no enumeration), and nothing was created.
        assert again.account_id != created.account_id
        await expect_status(
            identity.GetAccount(identity_pb2.GetAccountRequest(account_id=again.account_id)),
            grpc.StatusCode.NOT_FOUND,
        )
        assert "18" in await expect_status(
            identity.SignUp(sign_up("minor@example.org", "k-3", declared_age=17)),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        for password in ("Short-1", "x" * 20 + "Aa-1234", "alllowercase-1", "NoDigitsOrSpecial"):
            await expect_status(
                identity.SignUp(sign_up("p@example.org", f"k-{password}", password=password)),
                grpc.StatusCode.INVALID_ARGUMENT,
            )
        await expect_status(
            identity.SignUp(sign_up("q@example.org", "k-4", phone_number="12")),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        account = await identity.GetAccount(identity_pb2.GetAccountRequest(account_id=created.account_id))
        assert account.account.email == "Jane.Doe@Example.org"
        assert account.account.phone_number == "+33612345678"
        assert account.account.role == identity_pb2.ACCOUNT_ROLE_PATIENT


async def test_idempotency_keys_replay_the_first_result_and_refuse_other_parameters(stack: Stack) -> None:
    async with open_channel(stack.target("identity"), stack.ops_tokens()) as channel:
        identity = identity_pb2_grpc.IdentityServiceStub(channel)
        first = await identity.SignUp(sign_up("once@example.org", "same-key"))
        again = await identity.SignUp(sign_up("once@example.org", "same-key"))
        assert again.account_id == first.account_id
        await expect_status(
            identity.SignUp(sign_up("other@example.org", "same-key")), grpc.StatusCode.FAILED_PRECONDITION
        )
        await expect_status(
            identity.SignUp(sign_up("none@example.org", "")), grpc.StatusCode.INVALID_ARGUMENT
        )


@pytest.mark.req("ACC-12")
async def test_referent_doctor_accounts_need_a_valid_rpps_number(stack: Stack) -> None:
    async with open_channel(stack.target("identity"), stack.ops_tokens()) as channel:
        identity = identity_pb2_grpc.IdentityServiceStub(channel)
        request = identity_pb2.CreateStaffAccountRequest(
            idempotency_key="doc-1",
            role=identity_pb2.ACCOUNT_ROLE_REFERENT_DOCTOR,
            email="doc@example.org",
            phone_number="+33611111111",
            display_name="Dr Test",
            rpps_number="10000000010",  # wrong check digit
        )
        await expect_status(identity.CreateStaffAccount(request), grpc.StatusCode.INVALID_ARGUMENT)
        request.rpps_number = with_luhn_digit("1000000001")
        request.idempotency_key = "doc-2"
        created = await identity.CreateStaffAccount(request)
        assert created.account_id


@pytest.mark.req("CASE-08")
@pytest.mark.req("ACC-03")
@pytest.mark.req("DOC-02")
async def test_cases_are_created_by_their_filer_and_hidden_from_others(stack: Stack) -> None:
    signer = stack.identity_tokens()
    alice, _ = signer.mint("alice", Role.PATIENT, "s-a")
    bob, _ = signer.mint("bob", Role.PATIENT, "s-b")
    doctor, _ = signer.mint("doctor-1", Role.REFERENT_DOCTOR, "s-d")
    worker = ServiceTokenProvider(TokenSigner.from_keys_dir(stack.auth.keys_dir, "worker"))
    request = dossier_pb2.CreateCaseRequest(
        idempotency_key="case-1",
        filing_capacity=dossier_pb2.FILING_CAPACITY_SELF,
        therapeutic_area="oncology",
        purpose=dossier_pb2.CASE_PURPOSE_OPINION_BEFORE_INDEMNITY_CLAIM,
        doctor_choice_mode=dossier_pb2.DOCTOR_CHOICE_MODE_PLATFORM_CHOSEN,
    )
    target = stack.target("dossier")
    async with (
        open_channel(target, lambda: alice) as a,
        open_channel(target, lambda: bob) as b,
        open_channel(target, lambda: doctor) as d,
        open_channel(target, worker) as w,
    ):
        as_alice, as_bob = dossier_pb2_grpc.DossierServiceStub(a), dossier_pb2_grpc.DossierServiceStub(b)
        case = (await as_alice.CreateCase(request)).case
        assert case.status == dossier_pb2.CASE_STATUS_SUBMITTED
        assert case.filer_account_id == "alice"
        assert (await as_alice.CreateCase(request)).case.case_id == case.case_id  # retried submission
        get = dossier_pb2.GetCaseRequest(case_id=case.case_id)
        assert (
            await as_alice.GetCase(get)
        ).case.purpose == dossier_pb2.CASE_PURPOSE_OPINION_BEFORE_INDEMNITY_CLAIM
        await expect_status(as_bob.GetCase(get), grpc.StatusCode.NOT_FOUND)
        await expect_status(dossier_pb2_grpc.DossierServiceStub(d).GetCase(get), grpc.StatusCode.NOT_FOUND)
        # Bad input: an area outside the catalog, a missing beneficiary, an unspecified enum.
        bad_area = dossier_pb2.CreateCaseRequest()
        bad_area.CopyFrom(request)
        bad_area.idempotency_key, bad_area.therapeutic_area = "case-2", "astrology"
        await expect_status(as_alice.CreateCase(bad_area), grpc.StatusCode.INVALID_ARGUMENT)
        for_minor = dossier_pb2.CreateCaseRequest()
        for_minor.CopyFrom(request)
        for_minor.idempotency_key = "case-3"
        for_minor.filing_capacity = dossier_pb2.FILING_CAPACITY_LEGAL_REPRESENTATIVE_OF_MINOR
        await expect_status(as_alice.CreateCase(for_minor), grpc.StatusCode.INVALID_ARGUMENT)
        # Only the case workflow reports status, along allowed transitions.
        update = dossier_pb2.UpdateCaseStatusRequest(
            idempotency_key="u-1", case_id=case.case_id, status=dossier_pb2.CASE_STATUS_AWAITING_PAYMENT
        )
        await expect_status(as_alice.UpdateCaseStatus(update), grpc.StatusCode.PERMISSION_DENIED)
        as_worker = dossier_pb2_grpc.DossierServiceStub(w)
        updated = (await as_worker.UpdateCaseStatus(update)).case
        assert updated.status == dossier_pb2.CASE_STATUS_AWAITING_PAYMENT
        update.status = dossier_pb2.CASE_STATUS_REPORT_DELIVERED
        await expect_status(as_worker.UpdateCaseStatus(update), grpc.StatusCode.FAILED_PRECONDITION)


@pytest.mark.req("DOC-01")
async def test_referent_doctor_registry_lists_doctors_by_area_in_pages(stack: Stack) -> None:
    async with open_channel(stack.target("matching"), stack.ops_tokens()) as channel:
        matching = matching_pb2_grpc.MatchingServiceStub(channel)
        for index in range(5):
            await matching.RegisterReferentDoctor(
                matching_pb2.RegisterReferentDoctorRequest(
                    idempotency_key=f"doc-{index}",
                    account_id=f"account-{index}",
                    rpps_number=with_luhn_digit(f"200000000{index}"),
                    display_name=f"Dr {index}",
                    therapeutic_areas=["cardiology"] if index % 2 else ["cardiology", "neurology"],
                    languages=["fr"],
                    max_concurrent_cases=3,
                )
            )
        first = await matching.ListReferentDoctors(
            matching_pb2.ListReferentDoctorsRequest(therapeutic_area="cardiology", page_size=3)
        )
        second = await matching.ListReferentDoctors(
            matching_pb2.ListReferentDoctorsRequest(
                therapeutic_area="cardiology", page_size=3, page_token=first.next_page_token
            )
        )
        assert len(first.doctors) == 3 and len(second.doctors) == 2 and not second.next_page_token
        neurology = await matching.ListReferentDoctors(
            matching_pb2.ListReferentDoctorsRequest(therapeutic_area="neurology")
        )
        assert sorted(d.display_name for d in neurology.doctors) == ["Dr 0", "Dr 2", "Dr 4"]
        await expect_status(
            matching.ListReferentDoctors(
                matching_pb2.ListReferentDoctorsRequest(therapeutic_area="astrology")
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        duplicate = matching_pb2.RegisterReferentDoctorRequest(
            idempotency_key="doc-dup",
            account_id="account-0",
            rpps_number=with_luhn_digit("2000000000"),
            display_name="Dr 0",
            therapeutic_areas=["cardiology"],
            max_concurrent_cases=3,
        )
        await expect_status(matching.RegisterReferentDoctor(duplicate), grpc.StatusCode.ALREADY_EXISTS)
        duplicate.idempotency_key, duplicate.account_id, duplicate.max_concurrent_cases = "doc-zero", "new", 0
        await expect_status(matching.RegisterReferentDoctor(duplicate), grpc.StatusCode.INVALID_ARGUMENT)


@pytest.mark.req("BIL-01")
async def test_partners_are_recorded_once(stack: Stack) -> None:
    async with open_channel(stack.target("billing"), stack.ops_tokens()) as channel:
        billing = billing_pb2_grpc.BillingServiceStub(channel)
        created = await billing.CreatePartner(
            billing_pb2.CreatePartnerRequest(
                idempotency_key="p-1", name="Mutuelle  Test", kind=billing_pb2.PARTNER_KIND_MUTUELLE
            )
        )
        assert created.partner.name == "Mutuelle Test"
        await expect_status(
            billing.CreatePartner(
                billing_pb2.CreatePartnerRequest(
                    idempotency_key="p-2", name="Mutuelle Test", kind=billing_pb2.PARTNER_KIND_INSURER
                )
            ),
            grpc.StatusCode.ALREADY_EXISTS,
        )
        await expect_status(
            billing.CreatePartner(billing_pb2.CreatePartnerRequest(idempotency_key="p-3", name="No kind")),
            grpc.StatusCode.INVALID_ARGUMENT,
        )
        listed = await billing.ListPartners(billing_pb2.ListPartnersRequest())
        assert [p.partner_id for p in listed.partners] == [created.partner.partner_id]
