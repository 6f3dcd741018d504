"""Step-up, sessions, credential incidents, TOTP for staff (ACC-06, ACC-08..12)."""

from __future__ import annotations

import time
import uuid
from urllib.parse import parse_qs, urlparse

import grpc
import pyotp
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from secondopinion.identity.v1 import identity_pb2 as pb
from secondopinion.notifications.v1 import notifications_pb2 as npb

from deploy.seed import with_luhn_digit
from services.shared.auth import Role
from tests.identity.conftest import PASSWORD, Identity, expect

VERIFICATION = npb.NOTIFICATION_TEMPLATE_VERIFICATION_CODE
NEW_PASSWORD = "Brand-New-Secret-42"


def wrong(code: str) -> str:
    return "000000" if code != "000000" else "111111"


@pytest.mark.req("ACC-06")
async def test_step_up_opens_a_short_window_on_the_session(identity: Identity) -> None:
    await identity.sign_up("step@example.org")
    done = await identity.log_in("step@example.org")
    me = await identity.as_session(done.session_token)
    valid = await identity.gateway.ValidateSession(
        pb.ValidateSessionRequest(session_token=done.session_token)
    )
    assert not valid.HasField("step_up_valid_until")
    await expect(
        me.StartStepUp(pb.StartStepUpRequest(idempotency_key="s-0")), grpc.StatusCode.INVALID_ARGUMENT
    )
    started = await me.StartStepUp(
        pb.StartStepUpRequest(idempotency_key="s-1", purpose=pb.STEP_UP_PURPOSE_VIEW_REPORT)
    )
    assert started.factor == pb.SECOND_FACTOR_KIND_SMS_CODE
    code = identity.code(VERIFICATION)
    await expect(
        me.VerifyStepUp(pb.VerifyStepUpRequest(step_up_id=started.step_up_id, code=wrong(code))),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    # Another session of the same person cannot answer this challenge.
    other = await identity.as_session((await identity.log_in("step@example.org")).session_token)
    await expect(
        other.VerifyStepUp(pb.VerifyStepUpRequest(step_up_id=started.step_up_id, code=code)),
        grpc.StatusCode.NOT_FOUND,
    )
    answer = await me.VerifyStepUp(pb.VerifyStepUpRequest(step_up_id=started.step_up_id, code=code))
    valid = await identity.gateway.ValidateSession(
        pb.ValidateSessionRequest(session_token=done.session_token)
    )
    assert valid.step_up_valid_until == answer.step_up_valid_until
    assert 0 < answer.step_up_valid_until.seconds - time.time() <= 300
    await expect(
        me.VerifyStepUp(pb.VerifyStepUpRequest(step_up_id=started.step_up_id, code=code)),
        grpc.StatusCode.FAILED_PRECONDITION,
    )


@pytest.mark.req("ACC-05")
async def test_sessions_are_listed_and_ended(identity: Identity) -> None:
    await identity.sign_up("sessions@example.org")
    first = await identity.log_in("sessions@example.org")
    second = await identity.log_in("sessions@example.org")
    third = await identity.log_in("sessions@example.org")
    me = await identity.as_session(first.session_token)
    listed = await me.ListSessions(pb.ListSessionsRequest())
    assert len(listed.sessions) == 3
    assert [s.current for s in listed.sessions].count(True) == 1
    await me.EndSession(pb.EndSessionRequest(idempotency_key="e-1", session_id=second.session_id))
    await expect(
        identity.gateway.ValidateSession(pb.ValidateSessionRequest(session_token=second.session_token)),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    stranger = identity.as_role("someone", Role.PATIENT, "x")
    await expect(
        stranger.EndSession(pb.EndSessionRequest(idempotency_key="e-2", session_id=third.session_id)),
        grpc.StatusCode.NOT_FOUND,
    )
    ended = await me.EndOtherSessions(pb.EndOtherSessionsRequest(idempotency_key="o-1"))
    assert ended.ended_session_count == 1
    await expect(
        identity.gateway.ValidateSession(pb.ValidateSessionRequest(session_token=third.session_token)),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    await me.Logout(pb.LogoutRequest(idempotency_key="l-1"))
    await expect(
        identity.gateway.ValidateSession(pb.ValidateSessionRequest(session_token=first.session_token)),
        grpc.StatusCode.UNAUTHENTICATED,
    )


@pytest.mark.req("ACC-08")
@pytest.mark.req("ACC-04")
async def test_declared_loss_blocks_at_once_and_a_reset_by_link_and_code_unblocks(identity: Identity) -> None:
    account_id = await identity.sign_up("lost@example.org")
    done = await identity.log_in("lost@example.org")
    me = await identity.as_session(done.session_token)
    declared = await me.DeclareCredentialLoss(
        pb.DeclareCredentialLossRequest(
            idempotency_key="d-1", account_id=account_id, kind=pb.CREDENTIAL_INCIDENT_KIND_THEFT
        )
    )
    assert declared.ended_session_count == 1
    await expect(
        identity.gateway.ValidateSession(pb.ValidateSessionRequest(session_token=done.session_token)),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    assert "blocked" in await expect(
        identity.start_login("lost@example.org"), grpc.StatusCode.PERMISSION_DENIED
    )
    # Same answer for unknown emails; the link goes only to the known one.
    sent_before = len(identity.recorder.sent)
    unknown = await identity.gateway.RequestPasswordReset(
        pb.RequestPasswordResetRequest(idempotency_key="p-0", email="ghost@example.org")
    )
    assert unknown.link_expires_at.seconds > 0 and len(identity.recorder.sent) == sent_before
    await identity.gateway.RequestPasswordReset(
        pb.RequestPasswordResetRequest(idempotency_key="p-1", email="LOST@example.org")
    )
    email = await identity.posted(npb.NOTIFICATION_TEMPLATE_PASSWORD_RESET)
    assert email.channel == npb.CHANNEL_EMAIL and email.email == "lost@example.org"
    token = identity.link_token(npb.NOTIFICATION_TEMPLATE_PASSWORD_RESET)
    await expect(
        identity.gateway.ConfirmPasswordResetLink(
            pb.ConfirmPasswordResetLinkRequest(idempotency_key="c-0", reset_token="nope")
        ),
        grpc.StatusCode.NOT_FOUND,
    )
    confirmed = await identity.gateway.ConfirmPasswordResetLink(
        pb.ConfirmPasswordResetLinkRequest(idempotency_key="c-1", reset_token=token)
    )
    await expect(
        identity.gateway.ConfirmPasswordResetLink(
            pb.ConfirmPasswordResetLinkRequest(idempotency_key="c-2", reset_token=token)
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    code = identity.code(VERIFICATION)
    complete = pb.CompletePasswordResetRequest(
        password_reset_id=confirmed.password_reset_id, code=code, new_password="Password123!"
    )
    assert "common" in await expect(
        identity.gateway.CompletePasswordReset(complete), grpc.StatusCode.INVALID_ARGUMENT
    )
    complete.new_password, complete.code = NEW_PASSWORD, wrong(code)
    await expect(identity.gateway.CompletePasswordReset(complete), grpc.StatusCode.UNAUTHENTICATED)
    complete.code = code
    await identity.gateway.CompletePasswordReset(complete)
    await expect(identity.gateway.CompletePasswordReset(complete), grpc.StatusCode.FAILED_PRECONDITION)
    await expect(identity.start_login("lost@example.org", PASSWORD), grpc.StatusCode.UNAUTHENTICATED)
    await identity.log_in("lost@example.org", NEW_PASSWORD)
    assert identity.last(npb.NOTIFICATION_TEMPLATE_ACCOUNT_DETAILS_CHANGED).email == "lost@example.org"


@pytest.mark.req("ACC-08")
async def test_a_reset_code_can_be_sent_again_and_only_the_last_one_works(identity: Identity) -> None:
    """The SMS never came, or came too late: the reset page asks identity for another
    code instead of making the person start over from the email (a blocked account too:
    the reset is what unblocks it)."""
    account_id = await identity.sign_up("resend-reset@example.org")
    me = await identity.as_session((await identity.log_in("resend-reset@example.org")).session_token)
    await me.DeclareCredentialLoss(
        pb.DeclareCredentialLossRequest(
            idempotency_key="d-1", account_id=account_id, kind=pb.CREDENTIAL_INCIDENT_KIND_LOSS
        )
    )
    await identity.gateway.RequestPasswordReset(
        pb.RequestPasswordResetRequest(idempotency_key="p-1", email="resend-reset@example.org")
    )
    await identity.posted(npb.NOTIFICATION_TEMPLATE_PASSWORD_RESET)
    token = identity.link_token(npb.NOTIFICATION_TEMPLATE_PASSWORD_RESET)
    confirmed = await identity.gateway.ConfirmPasswordResetLink(
        pb.ConfirmPasswordResetLinkRequest(idempotency_key="c-1", reset_token=token)
    )
    first = identity.code(VERIFICATION)
    sms_before = len(identity.recorder.sent)
    resend = pb.ResendPasswordResetCodeRequest(
        idempotency_key="r-1", password_reset_id=confirmed.password_reset_id
    )
    answer = await identity.gateway.ResendPasswordResetCode(resend)
    assert answer.code_expires_at.seconds > time.time() and answer.next_resend_allowed_at.seconds > 0
    assert len(identity.recorder.sent) == sms_before + 1
    second = identity.last(VERIFICATION)
    assert second.channel == npb.CHANNEL_SMS and second.phone_number
    # A retried click answers the same and sends nothing more.
    assert await identity.gateway.ResendPasswordResetCode(resend) == answer
    assert len(identity.recorder.sent) == sms_before + 1
    # Only a reset's id is accepted: a login attempt's is not one.
    await identity.sign_up("someone-else@example.org")
    attempt = await identity.start_login("someone-else@example.org")
    for other_id in (attempt.login_attempt_id, str(uuid.uuid4())):
        await expect(
            identity.gateway.ResendPasswordResetCode(
                pb.ResendPasswordResetCodeRequest(idempotency_key=f"r-{other_id}", password_reset_id=other_id)
            ),
            grpc.StatusCode.NOT_FOUND,
        )
    # IDENTITY_MAX_CODES_PER_ATTEMPT (3 here) per reset at most, the first one included.
    await identity.gateway.ResendPasswordResetCode(
        pb.ResendPasswordResetCodeRequest(
            idempotency_key="r-2", password_reset_id=confirmed.password_reset_id
        )
    )
    await expect(
        identity.gateway.ResendPasswordResetCode(
            pb.ResendPasswordResetCodeRequest(
                idempotency_key="r-4", password_reset_id=confirmed.password_reset_id
            )
        ),
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    )
    last = identity.code(VERIFICATION)
    complete = pb.CompletePasswordResetRequest(
        password_reset_id=confirmed.password_reset_id, code=first, new_password=NEW_PASSWORD
    )
    if first != last:  # the first code was replaced
        await expect(identity.gateway.CompletePasswordReset(complete), grpc.StatusCode.UNAUTHENTICATED)
    complete.code = last
    await identity.gateway.CompletePasswordReset(complete)
    await identity.log_in("resend-reset@example.org", NEW_PASSWORD)
    # A finished reset sends no more codes.
    await expect(
        identity.gateway.ResendPasswordResetCode(
            pb.ResendPasswordResetCodeRequest(
                idempotency_key="r-5", password_reset_id=confirmed.password_reset_id
            )
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
    )


@pytest.mark.req("ACC-09")
async def test_provisional_credentials_deactivate_the_password(identity: Identity) -> None:
    account_id = await identity.sign_up("prov@example.org")
    dpo = identity.as_role("dpo-1", Role.DPO)
    issued = await dpo.IssueProvisionalCredentials(
        pb.IssueProvisionalCredentialsRequest(idempotency_key="i-1", account_id=account_id)
    )
    assert issued.expires_at.seconds - issued.issued_at.seconds == 72 * 3600
    await expect(identity.start_login("prov@example.org"), grpc.StatusCode.UNAUTHENTICATED)
    token = identity.link_token(npb.NOTIFICATION_TEMPLATE_PROVISIONAL_CREDENTIALS)
    confirmed = await identity.gateway.ConfirmPasswordResetLink(
        pb.ConfirmPasswordResetLinkRequest(idempotency_key="c", reset_token=token)
    )
    await identity.gateway.CompletePasswordReset(
        pb.CompletePasswordResetRequest(
            password_reset_id=confirmed.password_reset_id,
            code=identity.code(VERIFICATION),
            new_password=NEW_PASSWORD,
        )
    )
    await identity.log_in("prov@example.org", NEW_PASSWORD)
    stranger = identity.as_role("someone", Role.PATIENT)
    await expect(
        stranger.IssueProvisionalCredentials(
            pb.IssueProvisionalCredentialsRequest(idempotency_key="i-2", account_id=account_id)
        ),
        grpc.StatusCode.NOT_FOUND,
    )


@pytest.mark.req("ACC-08")
@pytest.mark.req("ACC-09")
async def test_the_dpo_replaces_a_stolen_phone_so_the_provisional_code_reaches_the_person(
    identity: Identity,
) -> None:
    """Phone and credentials stolen together: the person writes to the DPO, who checks who
    they are and issues provisional credentials with a new number, so the thief's phone
    gets no code. Nobody else may redirect codes, not even the person's own session."""
    account_id = await identity.sign_up("stolen-phone@example.org")
    me = await identity.as_session((await identity.log_in("stolen-phone@example.org")).session_token)
    dpo = identity.as_role("dpo-7", Role.DPO, "dpo-session-7")
    new_number = "+33 6 12 99 88 77"
    # The person's own session (perhaps the thief's) cannot redirect the codes.
    for caller, refusal in (
        (me, grpc.StatusCode.PERMISSION_DENIED),
        (identity.as_role("dpo-7", Role.DPO), None),
    ):
        request = pb.IssueProvisionalCredentialsRequest(
            idempotency_key=f"p-{uuid.uuid4()}",
            account_id=account_id if refusal else "dpo-7",
            new_phone_number=new_number,
        )
        await expect(caller.IssueProvisionalCredentials(request), grpc.StatusCode.PERMISSION_DENIED)
    # A number that cannot receive SMS is refused, and nothing changed.
    detail = await expect(
        dpo.IssueProvisionalCredentials(
            pb.IssueProvisionalCredentialsRequest(
                idempotency_key="p-bad", account_id=account_id, new_phone_number="+33 1 23 45 67 89"
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    assert detail.startswith("new_phone_number")
    await identity.log_in("stolen-phone@example.org")  # the password still works
    issued = await dpo.IssueProvisionalCredentials(
        pb.IssueProvisionalCredentialsRequest(
            idempotency_key="p-1", account_id=account_id, new_phone_number=new_number
        )
    )
    assert issued.expires_at.seconds > issued.issued_at.seconds
    await expect(identity.start_login("stolen-phone@example.org"), grpc.StatusCode.UNAUTHENTICATED)
    token = identity.link_token(npb.NOTIFICATION_TEMPLATE_PROVISIONAL_CREDENTIALS)
    assert (
        identity.last(npb.NOTIFICATION_TEMPLATE_PROVISIONAL_CREDENTIALS).email == "stolen-phone@example.org"
    )
    confirmed = await identity.gateway.ConfirmPasswordResetLink(
        pb.ConfirmPasswordResetLinkRequest(idempotency_key="c-1", reset_token=token)
    )
    sms = identity.last(VERIFICATION)
    assert sms.channel == npb.CHANNEL_SMS and sms.phone_number == "+33612998877"
    assert confirmed.masked_phone_number.endswith("77") and "99 88" not in confirmed.masked_phone_number
    await identity.gateway.CompletePasswordReset(
        pb.CompletePasswordResetRequest(
            password_reset_id=confirmed.password_reset_id,
            code=identity.code(VERIFICATION),
            new_password=NEW_PASSWORD,
        )
    )
    # From now on, login codes go to the new number too.
    await identity.log_in("stolen-phone@example.org", NEW_PASSWORD)
    assert identity.last(npb.NOTIFICATION_TEMPLATE_LOGIN_CODE).phone_number == "+33612998877"
    # The authentication log says staff replaced it, in which staff session, without the number.
    events = await dpo.ListAuthenticationEvents(pb.ListAuthenticationEventsRequest(account_id=account_id))
    (replaced,) = [e for e in events.events if e.kind == pb.AUTHENTICATION_EVENT_KIND_PHONE_REPLACED_BY_STAFF]
    assert replaced.session_id == "dpo-session-7"
    assert "612998877" not in str(events)


@pytest.mark.req("ACC-10")
async def test_breach_flag_sends_the_notice_and_forces_a_change(identity: Identity) -> None:
    account_id = await identity.sign_up("breach@example.org")
    detected = Timestamp()
    detected.GetCurrentTime()
    flagged = await identity.ops.FlagPasswordBreach(
        pb.FlagPasswordBreachRequest(idempotency_key="b-1", account_id=account_id, detected_at=detected)
    )
    assert flagged.notification_id and flagged.flagged_at.seconds > 0
    assert identity.last(npb.NOTIFICATION_TEMPLATE_BREACH_NOTICE).email == "breach@example.org"
    await expect(
        identity.ops.FlagPasswordBreach(
            pb.FlagPasswordBreachRequest(idempotency_key="b-2", account_id=account_id)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    done = await identity.log_in("breach@example.org")
    assert done.must_change_password
    valid = await identity.gateway.ValidateSession(
        pb.ValidateSessionRequest(session_token=done.session_token)
    )
    assert valid.must_change_password
    me = await identity.as_session(done.session_token)
    change = pb.ChangePasswordRequest(
        idempotency_key="ch-1", current_password=PASSWORD, new_password=PASSWORD
    )
    await expect(me.ChangePassword(change), grpc.StatusCode.INVALID_ARGUMENT)
    await expect(
        me.ChangePassword(
            pb.ChangePasswordRequest(
                idempotency_key="ch-2", current_password="Wrong-Pass-77", new_password=NEW_PASSWORD
            )
        ),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    await me.ChangePassword(
        pb.ChangePasswordRequest(idempotency_key="ch-3", current_password=PASSWORD, new_password=NEW_PASSWORD)
    )
    assert not (await identity.log_in("breach@example.org", NEW_PASSWORD)).must_change_password


@pytest.mark.req("ACC-12")
async def test_staff_enrol_totp_and_need_it_at_every_login(identity: Identity) -> None:
    await expect(
        identity.ops.CreateStaffAccount(
            pb.CreateStaffAccountRequest(
                idempotency_key="d-0",
                role=pb.ACCOUNT_ROLE_REFERENT_DOCTOR,
                email="dr@example.org",
                phone_number="+33611111111",
                display_name="Dr Who",
                rpps_number="10000000010",
            )
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
    )
    created = await identity.ops.CreateStaffAccount(
        pb.CreateStaffAccountRequest(
            idempotency_key="d-1",
            role=pb.ACCOUNT_ROLE_REFERENT_DOCTOR,
            email="dr@example.org",
            phone_number="+33611111111",
            display_name="Dr Who",
            rpps_number=with_luhn_digit("1000000001"),
        )
    )
    # No password yet: the doctor chooses one through the emailed link and an SMS code.
    await identity.gateway.RequestPasswordReset(
        pb.RequestPasswordResetRequest(idempotency_key="r-1", email="dr@example.org")
    )
    await identity.posted(npb.NOTIFICATION_TEMPLATE_PASSWORD_RESET)
    confirmed = await identity.gateway.ConfirmPasswordResetLink(
        pb.ConfirmPasswordResetLinkRequest(
            idempotency_key="c-1", reset_token=identity.link_token(npb.NOTIFICATION_TEMPLATE_PASSWORD_RESET)
        )
    )
    await identity.gateway.CompletePasswordReset(
        pb.CompletePasswordResetRequest(
            password_reset_id=confirmed.password_reset_id,
            code=identity.code(VERIFICATION),
            new_password=NEW_PASSWORD,
        )
    )
    first = await identity.log_in("dr@example.org", NEW_PASSWORD)
    assert first.must_enrol_totp
    me = await identity.as_session(first.session_token)
    enrolment = await me.StartTotpEnrolment(pb.StartTotpEnrolmentRequest(idempotency_key="t-1"))
    assert enrolment.provisioning_uri.startswith("otpauth://totp/")
    totp = pyotp.TOTP(parse_qs(urlparse(enrolment.provisioning_uri).query)["secret"][0])
    await expect(
        me.ConfirmTotpEnrolment(
            pb.ConfirmTotpEnrolmentRequest(enrolment_id=enrolment.enrolment_id, code=wrong(totp.now()))
        ),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    confirmed_totp = await me.ConfirmTotpEnrolment(
        pb.ConfirmTotpEnrolmentRequest(enrolment_id=enrolment.enrolment_id, code=totp.now())
    )
    recovery = list(confirmed_totp.recovery_codes)
    assert len(recovery) == 10 and len(set(recovery)) == 10
    account = (await me.GetAccount(pb.GetAccountRequest(account_id=created.account_id))).account
    assert account.totp_enrolled and account.rpps_number

    # Every login now: SMS code, then TOTP.
    attempt = await identity.start_login("dr@example.org", NEW_PASSWORD)
    assert list(attempt.required_factors) == [pb.SECOND_FACTOR_KIND_SMS_CODE, pb.SECOND_FACTOR_KIND_TOTP]
    await expect(
        identity.verify(attempt.login_attempt_id, totp.now(), pb.SECOND_FACTOR_KIND_TOTP),
        grpc.StatusCode.FAILED_PRECONDITION,
    )
    halfway = await identity.verify(attempt.login_attempt_id, identity.code())
    assert not halfway.completed and list(halfway.remaining_factors) == [pb.SECOND_FACTOR_KIND_TOTP]
    next_code = totp.at(time.time() + 30)  # the enrolment spent the current step
    done = await identity.verify(attempt.login_attempt_id, next_code, pb.SECOND_FACTOR_KIND_TOTP)
    assert done.completed and not done.must_enrol_totp
    # A TOTP code is accepted once; a recovery code stands in for it, once.
    again = await identity.start_login("dr@example.org", NEW_PASSWORD)
    await identity.verify(again.login_attempt_id, identity.code())
    await expect(
        identity.verify(again.login_attempt_id, next_code, pb.SECOND_FACTOR_KIND_TOTP),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    assert (
        await identity.verify(again.login_attempt_id, recovery[0], pb.SECOND_FACTOR_KIND_RECOVERY_CODE)
    ).completed
    third = await identity.start_login("dr@example.org", NEW_PASSWORD)
    await identity.verify(third.login_attempt_id, identity.code())
    await expect(
        identity.verify(third.login_attempt_id, recovery[0], pb.SECOND_FACTOR_KIND_RECOVERY_CODE),
        grpc.StatusCode.UNAUTHENTICATED,
    )
    # Step-up for staff asks for TOTP; an administrator can reset the factor.
    step = await me.StartStepUp(
        pb.StartStepUpRequest(idempotency_key="s-1", purpose=pb.STEP_UP_PURPOSE_VIEW_DOCUMENTS)
    )
    assert step.factor == pb.SECOND_FACTOR_KIND_TOTP
    await expect(
        identity.as_role("x", Role.COORDINATOR).ResetSecondFactor(
            pb.ResetSecondFactorRequest(idempotency_key="z", account_id=created.account_id)
        ),
        grpc.StatusCode.PERMISSION_DENIED,
    )
    reset = await identity.as_role("admin", Role.ADMINISTRATOR).ResetSecondFactor(
        pb.ResetSecondFactorRequest(idempotency_key="z-1", account_id=created.account_id)
    )
    assert not reset.account.totp_enrolled
