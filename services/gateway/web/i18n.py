"""French first, English too: the person's choice lives in a strictly necessary cookie."""

from __future__ import annotations

from collections.abc import Callable

SUPPORTED = ("fr", "en")
DEFAULT = "fr"
LANG_COOKIE = "so_lang"

MESSAGES: dict[str, dict[str, str]] = {
    "app_name": {"fr": "Second avis médical", "en": "Second medical opinion"},
    "no_emergency": {
        "fr": "Ce service ne traite pas les urgences. En cas d'urgence, appelez le 15 ou le 112. "
        "La messagerie n'est pas une téléconsultation.",
        "en": "This service does not handle emergencies. In an emergency, call 15 or 112. "
        "Messaging is not a teleconsultation.",
    },
    "login": {"fr": "Se connecter", "en": "Log in"},
    "logout": {"fr": "Se déconnecter", "en": "Log out"},
    "signup": {"fr": "Créer un compte", "en": "Create an account"},
    "email": {"fr": "Adresse e-mail", "en": "Email address"},
    "password": {"fr": "Mot de passe", "en": "Password"},
    "password_hint": {
        "fr": "8 à 25 caractères, avec majuscules, minuscules, chiffres et/ou caractères spéciaux.",
        "en": "8 to 25 characters, with upper case, lower case, digits and/or special characters.",
    },
    "phone": {"fr": "Téléphone mobile (pour les codes)", "en": "Mobile phone (for codes)"},
    "age": {"fr": "Votre âge", "en": "Your age"},
    "accept_terms": {
        "fr": "J'ai lu et j'accepte les conditions générales d'utilisation",
        "en": "I have read and accept the terms of use",
    },
    "code": {"fr": "Code reçu par SMS", "en": "Code received by SMS"},
    "totp_code": {
        "fr": "Code de votre application d'authentification",
        "en": "Code from your authenticator app",
    },
    "code_sent": {
        "fr": "Un code à 6 chiffres a été envoyé au {phone}.",
        "en": "A 6-digit code was sent to {phone}.",
    },
    "validate": {"fr": "Valider", "en": "Confirm"},
    "resend_code": {"fr": "Renvoyer le code", "en": "Send the code again"},
    "bad_credentials": {
        "fr": "Adresse e-mail ou mot de passe incorrect.",
        "en": "Incorrect email address or password.",
    },
    "bad_code": {"fr": "Code incorrect ou expiré.", "en": "Incorrect or expired code."},
    "locked": {
        "fr": "Compte bloqué après trop d'essais. Consultez vos e-mails pour le débloquer.",
        "en": "Account locked after too many attempts. Check your emails to unlock it.",
    },
    "too_many": {
        "fr": "Trop de tentatives. Réessayez dans {seconds} secondes.",
        "en": "Too many attempts. Try again in {seconds} seconds.",
    },
    "unavailable": {
        "fr": "Le service est momentanément indisponible. Réessayez.",
        "en": "The service is temporarily unavailable. Please retry.",
    },
    "my_requests": {"fr": "Mes demandes d'avis", "en": "My opinion requests"},
    "no_requests": {"fr": "Aucune demande pour l'instant.", "en": "No request yet."},
    "new_request": {"fr": "Nouvelle demande d'avis", "en": "New opinion request"},
    "for_whom": {"fr": "Pour qui ?", "en": "For whom?"},
    "self": {"fr": "Pour moi-même", "en": "For myself"},
    "legal_representative_of_minor": {"fr": "Pour un enfant mineur", "en": "For a minor child"},
    "legal_representative_of_ward": {"fr": "Pour un majeur protégé", "en": "For an adult under guardianship"},
    "mandated_person": {"fr": "Pour la personne qui m'a mandaté", "en": "For the person who mandated me"},
    "area": {"fr": "Domaine thérapeutique", "en": "Therapeutic area"},
    "purpose": {"fr": "Objet de la demande", "en": "Purpose of the request"},
    "second_opinion": {"fr": "Second avis médical", "en": "Second medical opinion"},
    "opinion_before_indemnity_claim": {
        "fr": "Avis avant une demande d'indemnisation",
        "en": "Opinion before an indemnity claim",
    },
    "choice_mode": {"fr": "Choix du médecin", "en": "Choice of doctor"},
    "platform_chosen": {
        "fr": "La plateforme choisit (avis sous 7 jours)",
        "en": "The platform chooses (opinion within 7 days)",
    },
    "patient_chosen": {"fr": "Je choisis mon ou mes médecins", "en": "I choose my doctor(s)"},
    "doctors": {"fr": "Médecins référents", "en": "Referent doctors"},
    "submit": {"fr": "Envoyer", "en": "Submit"},
    "status": {"fr": "Statut", "en": "Status"},
    "created": {"fr": "Créée le", "en": "Created on"},
    "request": {"fr": "Demande", "en": "Request"},
    "back": {"fr": "Retour", "en": "Back"},
    "cookies_title": {"fr": "Cookies", "en": "Cookies"},
    "cookies_text": {
        "fr": "Nous n'utilisons que des cookies strictement nécessaires (session, sécurité, langue). "
        "Aucun cookie publicitaire. Les cookies de mesure d'audience ne sont déposés qu'avec votre accord.",
        "en": "We only use strictly necessary cookies (session, security, language). No advertising "
        "cookies. Audience cookies are set only with your consent.",
    },
    "cookies_accept": {"fr": "Accepter la mesure d'audience", "en": "Accept audience measurement"},
    "cookies_refuse": {"fr": "Continuer sans accepter", "en": "Continue without accepting"},
    "language": {"fr": "English", "en": "Français"},
    "status_draft": {"fr": "Brouillon", "en": "Draft"},
    "status_submitted": {"fr": "Envoyée", "en": "Submitted"},
    "status_awaiting_payment": {"fr": "En attente de paiement", "en": "Awaiting payment"},
    "status_awaiting_assignment": {"fr": "Attribution à un médecin", "en": "Assigning a doctor"},
    "status_in_review": {"fr": "En cours d'examen", "en": "Under review"},
    "status_awaiting_information": {"fr": "Informations demandées", "en": "Information requested"},
    "status_escalated": {"fr": "Suivi par la coordination", "en": "Followed by the coordination team"},
    "status_report_delivered": {"fr": "Avis disponible", "en": "Opinion available"},
    "status_closed": {"fr": "Clôturée", "en": "Closed"},
    "status_cancelled": {"fr": "Annulée", "en": "Cancelled"},
    "area_oncology": {"fr": "Cancérologie", "en": "Oncology"},
    "area_cardiology": {"fr": "Cardiologie", "en": "Cardiology"},
    "area_orthopaedics": {"fr": "Orthopédie", "en": "Orthopaedics"},
    "area_neurology": {"fr": "Neurologie", "en": "Neurology"},
    "form_error": {"fr": "Vérifiez le formulaire : {detail}", "en": "Please check the form: {detail}"},
    "session_expired": {
        "fr": "Votre session a expiré, reconnectez-vous.",
        "en": "Your session expired, please log in again.",
    },
    "signed_up": {
        "fr": "Compte créé. Connectez-vous pour continuer.",
        "en": "Account created. Log in to continue.",
    },
}


def pick_locale(cookie: str | None, accept_language: str | None) -> str:
    if cookie in SUPPORTED:
        return str(cookie)
    for part in (accept_language or "").split(","):
        code = part.split(";")[0].strip()[:2].lower()
        if code in SUPPORTED:
            return code
    return DEFAULT


def translator(locale: str) -> Callable[..., str]:
    def translate(key: str, **values: object) -> str:
        entry = MESSAGES.get(key)
        text = entry.get(locale, entry[DEFAULT]) if entry else key
        return text.format(**values) if values else text

    return translate
