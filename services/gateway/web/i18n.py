# ruff: noqa: E501 - sentences shown to people are kept whole
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
        "fr": "Compte bloqué (trop d'essais, ou identifiants déclarés perdus ou volés). Pour le débloquer, choisissez un nouveau mot de passe : « Mot de passe oublié ? ».",
        "en": 'Account blocked (too many attempts, or credentials declared lost or stolen). To unblock it, choose a new password: "Forgot your password?".',
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
    "not_found": {"fr": "Introuvable.", "en": "Not found."},
    "not_available_yet": {
        "fr": "Cette fonction n'est pas encore disponible.",
        "en": "This feature is not available yet.",
    },
    "upload_too_large": {
        "fr": "Le fichier est trop volumineux ({mb} Mo au maximum).",
        "en": "The file is too large ({mb} MB at most).",
    },
    "upload_refused": {
        "fr": "Le document a été refusé : {detail}",
        "en": "The document was refused: {detail}",
    },
    "abuse_reported": {
        "fr": "Signalement transmis à l'équipe. Merci.",
        "en": "Report sent to the team. Thank you.",
    },
    "coverage_refused": {
        "fr": "Ce code de prise en charge n'est pas valable pour cette demande.",
        "en": "This coverage code is not valid for this request.",
    },
    "confirm_needed": {"fr": "Cochez la case de confirmation.", "en": "Tick the confirmation box."},
    "account_closed": {
        "fr": "Votre compte est clôturé. Vos données sont archivées, pas supprimées.",
        "en": "Your account is closed. Your data is archived, not deleted.",
    },
    "retry_sent": {"fr": "Le workflow a été relancé.", "en": "The workflow was told to retry."},
    "email_or_phone": {"fr": "indiquez un e-mail ou un téléphone", "en": "give an email or a phone number"},
    "abuse_queue": {"fr": "Signalements de contenus abusifs", "en": "Abuse reports"},
    "accept": {"fr": "Accepter", "en": "Accept"},
    "decline": {"fr": "Refuser", "en": "Decline"},
    "accept_notice": {"fr": "J'ai lu la notice d'information", "en": "I have read the information notice"},
    "access_log": {"fr": "Historique des accès à mes données", "en": "History of accesses to my data"},
    "add_document": {"fr": "Ajouter un document médical", "en": "Add a medical document"},
    "add_postal": {"fr": "Ajouter le document reçu par courrier", "en": "Add the document received by post"},
    "added_on": {"fr": "Ajouté le", "en": "Added on"},
    "amount": {"fr": "Montant", "en": "Amount"},
    "answer_request": {"fr": "Répondre à la demande du médecin", "en": "Answer the doctor's request"},
    "ask_new_copy": {"fr": "Demander une nouvelle copie", "en": "Ask for a new copy"},
    "assigned_cases": {"fr": "Dossiers qui me sont confiés", "en": "Cases assigned to me"},
    "at_risk_cases": {"fr": "Dossiers à risque (échéance proche)", "en": "Cases at risk (deadline near)"},
    "by_post": {"fr": "reçu par courrier", "en": "received by post"},
    "card_hint": {
        "fr": "Paiement sécurisé par carte (CB, Visa, Mastercard) sur la page de notre prestataire de paiement. Aucune donnée de carte n'est conservée par la plateforme.",
        "en": "Secure card payment (CB, Visa, Mastercard) on our payment provider's page. The platform keeps no card data.",
    },
    "checklist": {"fr": "Étapes à compléter", "en": "Steps to complete"},
    "close_account": {"fr": "Clôturer mon compte", "en": "Close my account"},
    "close_account_text": {
        "fr": "La clôture met fin à l'accès au service. Les données sont archivées pour les durées légales, pas supprimées.",
        "en": "Closing ends access to the service. Data is archived for the legal periods, not deleted.",
    },
    "consent_health_data": {
        "fr": "Je consens au traitement de mes données de santé pour l'avis médical (obligatoire)",
        "en": "I consent to the processing of my health data for the medical opinion (required)",
    },
    "consent_report_to_physician": {
        "fr": "J'accepte que l'avis soit envoyé à mon médecin traitant par messagerie sécurisée de santé (facultatif)",
        "en": "I agree that the opinion is sent to my treating physician through secure health messaging (optional)",
    },
    "optional_consent": {
        "fr": "Ce consentement est facultatif et séparé des autres.",
        "en": "This consent is optional and separate from the others.",
    },
    "continue_to_payment": {
        "fr": "Continuer vers la page de paiement sécurisée",
        "en": "Continue to the secure payment page",
    },
    "coordination": {"fr": "Coordination", "en": "Coordination"},
    "coverage_code": {
        "fr": "Code de prise en charge (assureur, mutuelle, employeur)",
        "en": "Coverage code (insurer, mutual, employer)",
    },
    "use_coverage_code": {"fr": "Utiliser ce code", "en": "Use this code"},
    "credit_note": {"fr": "avoir", "en": "credit note"},
    "deadline": {"fr": "Échéance", "en": "Deadline"},
    "decline_reason": {"fr": "Motif du refus", "en": "Reason for declining"},
    "doctor": {"fr": "Médecin", "en": "Doctor"},
    "patient": {"fr": "Patient", "en": "Patient"},
    "doctor_space": {"fr": "Espace médecin", "en": "Doctor's space"},
    "documents": {"fr": "Documents", "en": "Documents"},
    "done": {"fr": "fait", "en": "done"},
    "todo": {"fr": "à faire", "en": "to do"},
    "download_pdf": {"fr": "Télécharger (PDF)", "en": "Download (PDF)"},
    "escalated_cases": {"fr": "Dossiers escaladés", "en": "Escalated cases"},
    "expected_date": {"fr": "Date prévue de l'avis", "en": "Expected date of the opinion"},
    "file": {"fr": "Fichier", "en": "File"},
    "first_name": {"fr": "Prénom", "en": "First name"},
    "last_name": {"fr": "Nom", "en": "Last name"},
    "flag_reason": {"fr": "Motif", "en": "Reason"},
    "flag_unreadable": {"fr": "Illisible", "en": "Unreadable"},
    "flag_incomplete": {"fr": "Incomplet", "en": "Incomplete"},
    "for_represented": {"fr": "pour la personne représentée", "en": "for the person represented"},
    "form_pre_form": {"fr": "Pré-formulaire", "en": "Pre-form"},
    "form_pathology": {"fr": "Formulaire pathologie", "en": "Pathology form"},
    "hidden_message": {"fr": "Message masqué après signalement.", "en": "Message hidden after a report."},
    "i_confirm": {"fr": "Je confirme", "en": "I confirm"},
    "invite": {"fr": "Inviter le patient", "en": "Invite the patient"},
    "invited_patients": {"fr": "Patients invités", "en": "Invited patients"},
    "invoices": {"fr": "Mes factures", "en": "My invoices"},
    "issued_on": {"fr": "Émise le", "en": "Issued on"},
    "mandate_title": {
        "fr": "Saisie pour le patient (mandat d'assistance personnelle)",
        "en": "Data entry for the patient (personal-assistant mandate)",
    },
    "mandate_text": {
        "fr": "Chaque saisie est tracée comme faite sous mandat ; sans mandat ni habilitation, elle est refusée.",
        "en": "Every entry is traced as made under the mandate; without mandate or habilitation it is refused.",
    },
    "message_kind": {"fr": "Type de message", "en": "Kind of message"},
    "messages": {"fr": "Messagerie sécurisée", "en": "Secure messaging"},
    "my_account": {"fr": "Mon compte", "en": "My account"},
    "no": {"fr": "Non", "en": "No"},
    "yes": {"fr": "Oui", "en": "Yes"},
    "no_access": {"fr": "Aucun accès enregistré.", "en": "No access recorded."},
    "no_assigned": {"fr": "Aucun dossier en cours.", "en": "No case in progress."},
    "no_documents": {"fr": "Aucun document.", "en": "No document."},
    "no_invoices": {"fr": "Aucune facture.", "en": "No invoice."},
    "no_messages": {"fr": "Aucun message.", "en": "No message."},
    "no_offers": {"fr": "Aucune proposition en attente.", "en": "No pending offer."},
    "no_report": {"fr": "Aucun avis disponible.", "en": "No opinion available."},
    "none": {"fr": "Aucun.", "en": "None."},
    "not_teleconsultation": {
        "fr": "La messagerie n'est pas une téléconsultation et ne traite pas les urgences (15 ou 112).",
        "en": "Messaging is not a teleconsultation and handles no emergencies (15 or 112).",
    },
    "notes": {"fr": "Vos commentaires et questions", "en": "Your comments and questions"},
    "notes_label": {
        "fr": "Commentaires et questions pour les médecins",
        "en": "Comments and questions for the doctors",
    },
    "notice_missing": {
        "fr": "La notice d'information n'est pas publiée : contactez le support.",
        "en": "The information notice is not published: contact support.",
    },
    "number": {"fr": "Numéro", "en": "Number"},
    "offers": {"fr": "Propositions de dossiers", "en": "Case offers"},
    "open_case": {"fr": "Ouvrir le dossier", "en": "Open the case"},
    "oppose_doctor": {"fr": "M'opposer à l'accès de ce médecin", "en": "Oppose this doctor's access"},
    "order_reference": {"fr": "Référence de commande", "en": "Order reference"},
    "pay_by_card": {"fr": "Payer par carte", "en": "Pay by card"},
    "phone_plain": {"fr": "Téléphone mobile", "en": "Mobile phone"},
    "postal_document": {"fr": "Document numérisé", "en": "Scanned document"},
    "psp_redirect": {
        "fr": "Vous allez être redirigé vers la page de paiement sécurisée de notre prestataire pour régler {amount}.",
        "en": "You will go to our payment provider's secure page to pay {amount}.",
    },
    "read_report": {
        "fr": "Lire l'avis (code de confirmation demandé)",
        "en": "Read the opinion (a confirmation code is asked)",
    },
    "received_on": {"fr": "Reçu le", "en": "Received on"},
    "referral_hint": {
        "fr": "Nom et moyen de contact uniquement : aucune donnée de santé.",
        "en": "Name and contact only: no health data.",
    },
    "referrals": {"fr": "Inviter un patient", "en": "Invite a patient"},
    "report": {"fr": "Avis médical", "en": "Medical opinion"},
    "report_abuse": {"fr": "Signaler un contenu abusif", "en": "Report abusive content"},
    "report_delivered": {"fr": "Avis remis au patient.", "en": "Opinion delivered to the patient."},
    "report_file": {"fr": "Fichier de l'avis", "en": "Opinion file"},
    "report_file_attached": {
        "fr": "Un fichier est joint à l'avis.",
        "en": "A file is attached to the opinion.",
    },
    "report_file_upload": {"fr": "Joindre l'avis en PDF", "en": "Attach the opinion as a PDF"},
    "report_submitted": {
        "fr": "Avis transmis : il est scellé et remis au patient après vérification.",
        "en": "Opinion submitted: it is sealed and delivered to the patient after checks.",
    },
    "report_text": {"fr": "Compte-rendu", "en": "Report"},
    "required_hint": {
        "fr": "* champ obligatoire pour l'envoi (un brouillon peut être incomplet).",
        "en": "* required to submit (a draft may be incomplete).",
    },
    "resolution": {"fr": "Décision", "en": "Decision"},
    "resolve": {"fr": "Traiter", "en": "Resolve"},
    "respond_by": {"fr": "répondre avant le", "en": "answer before"},
    "review_deadline": {"fr": "avis attendu le", "en": "opinion due"},
    "retry_workflow": {"fr": "Relancer le workflow", "en": "Retry the workflow"},
    "save": {"fr": "Enregistrer", "en": "Save"},
    "save_draft": {"fr": "Enregistrer le brouillon", "en": "Save the draft"},
    "seal": {"fr": "Empreinte de scellement", "en": "Seal fingerprint"},
    "send": {"fr": "Envoyer", "en": "Send"},
    "send_code": {"fr": "Recevoir un code", "en": "Get a code"},
    "step_consents": {"fr": "Notice d'information et consentements", "en": "Information notice and consents"},
    "step_pay": {"fr": "Paiement ou prise en charge", "en": "Payment or coverage"},
    "step_up_title": {"fr": "Confirmation par code", "en": "Confirm with a code"},
    "step_up_text": {
        "fr": "Pour protéger vos données de santé, un code à usage unique vous est demandé.",
        "en": "To protect your health data, a one-time code is asked.",
    },
    "submit_form": {"fr": "Valider et envoyer le formulaire", "en": "Submit the form"},
    "submit_report": {"fr": "Transmettre l'avis", "en": "Submit the opinion"},
    "submit_request": {"fr": "Envoyer la demande", "en": "Submit the request"},
    "terms": {"fr": "Conditions générales d'utilisation", "en": "Terms of use"},
    "text": {"fr": "Texte", "en": "Text"},
    "texts_and_consents": {
        "fr": "Conditions, notices et consentements donnés",
        "en": "Terms, notices and consents given",
    },
    "timeline": {"fr": "Suivi de la demande", "en": "Progress of the request"},
    "ttc": {"fr": "TTC", "en": "incl. taxes"},
    "under_mandate": {"fr": "Saisi sous mandat d'assistance", "en": "Entered under the assistance mandate"},
    "upload": {"fr": "Envoyer le fichier", "en": "Upload the file"},
    "upload_hint": {
        "fr": "PDF, JPEG, PNG ou DICOM, {mb} Mo au maximum.",
        "en": "PDF, JPEG, PNG or DICOM, {mb} MB at most.",
    },
    "upload_progress": {"fr": "Progression de l'envoi", "en": "Upload progress"},
    "what": {"fr": "Quoi", "en": "What"},
    "when": {"fr": "Quand", "en": "When"},
    "who": {"fr": "Qui", "en": "Who"},
    "why": {"fr": "Pourquoi", "en": "Why"},
    "withdraw": {"fr": "Retirer", "en": "Withdraw"},
    "withdraw_closes": {
        "fr": "le retrait clôture votre compte et arrête le service",
        "en": "withdrawing closes your account and stops the service",
    },
    "withdraw_consent": {"fr": "Retirer un consentement", "en": "Withdraw a consent"},
    "workflow": {"fr": "Voir le workflow", "en": "See the workflow"},
    "write_message": {"fr": "Votre message", "en": "Your message"},
    "you": {"fr": "Vous", "en": "You"},
    "expected_unknown_platform_chosen": {
        "fr": "moins de 7 jours après l'attribution à un médecin",
        "en": "under 7 days once a doctor is assigned",
    },
    "expected_unknown_patient_chosen": {
        "fr": "communiquée par e-mail selon le médecin choisi",
        "en": "emailed according to the doctor chosen",
    },
    "order_awaiting_payment": {"fr": "En attente de paiement", "en": "Awaiting payment"},
    "order_paid": {"fr": "Payée", "en": "Paid"},
    "order_covered": {"fr": "Prise en charge", "en": "Covered"},
    "order_refunded": {"fr": "Remboursée", "en": "Refunded"},
    "order_partially_refunded": {"fr": "Partiellement remboursée", "en": "Partly refunded"},
    "order_cancelled": {"fr": "Annulée", "en": "Cancelled"},
    "payment_accepted": {"fr": "Paiement accepté. Merci !", "en": "Payment accepted. Thank you!"},
    "payment_refused": {
        "fr": "Paiement refusé par la banque. Vous pouvez réessayer.",
        "en": "Payment refused by the bank. You can try again.",
    },
    "payment_cancelled": {
        "fr": "Paiement annulé. Vous pouvez réessayer.",
        "en": "Payment cancelled. You can try again.",
    },
    "payment_pending": {"fr": "Paiement en cours de confirmation.", "en": "Payment being confirmed."},
    "doc_quarantined": {"fr": "en cours d'analyse", "en": "being scanned"},
    "doc_available": {"fr": "disponible", "en": "available"},
    "doc_rejected": {"fr": "refusé (fichier dangereux)", "en": "refused (dangerous file)"},
    "doc_flagged": {"fr": "nouvelle copie demandée", "en": "new copy asked"},
    "doc_replaced": {"fr": "remplacé", "en": "replaced"},
    "kind_general": {"fr": "Message", "en": "Message"},
    "kind_information_request": {"fr": "Demande d'informations", "en": "Request for information"},
    "kind_document_request": {"fr": "Demande de document", "en": "Request for a document"},
    "kind_information_response": {"fr": "Réponse", "en": "Answer"},
    "form_status_draft": {"fr": "Brouillon enregistré.", "en": "Draft saved."},
    "form_status_submitted": {
        "fr": "Formulaire envoyé (une modification crée une nouvelle version).",
        "en": "Form submitted (a change makes a new version).",
    },
    "notice_self": {"fr": "Notice d'information", "en": "Information notice"},
    "notice_legal_representative_of_minor": {
        "fr": "Notice pour le représentant légal",
        "en": "Notice for the legal representative",
    },
    "notice_legal_representative_of_ward": {
        "fr": "Notice pour le représentant légal",
        "en": "Notice for the legal representative",
    },
    "notice_mandated_person": {
        "fr": "Notice pour la personne mandatée",
        "en": "Notice for the mandated person",
    },
    "evidence_text_accepted": {"fr": "Texte accepté", "en": "Text accepted"},
    "evidence_consent_given": {"fr": "Consentement donné", "en": "Consent given"},
    "evidence_consent_withdrawn": {"fr": "Consentement retiré", "en": "Consent withdrawn"},
    "evidence_objection_recorded": {"fr": "Opposition enregistrée", "en": "Objection recorded"},
    "evidence_objection_withdrawn": {"fr": "Opposition levée", "en": "Objection lifted"},
    "evidence_minor_informed_attested": {
        "fr": "Information du mineur attestée",
        "en": "Minor's information attested",
    },
    "consent_kind_health_data_processing": {
        "fr": "Traitement des données de santé",
        "en": "Processing of health data",
    },
    "consent_kind_report_to_treating_physician": {
        "fr": "Envoi de l'avis au médecin traitant",
        "en": "Sending the opinion to the treating physician",
    },
    "consent_kind_personal_assistant_mandate": {
        "fr": "Mandat d'assistance personnelle",
        "en": "Personal-assistant mandate",
    },
    "text_kind_terms": {"fr": "Conditions générales d'utilisation", "en": "Terms of use"},
    "text_kind_notice_self": {"fr": "Notice d'information", "en": "Information notice"},
    "text_kind_notice_legal_representative": {
        "fr": "Notice du représentant légal",
        "en": "Legal representative's notice",
    },
    "text_kind_notice_mandated_person": {
        "fr": "Notice de la personne mandatée",
        "en": "Mandated person's notice",
    },
    "text_kind_privacy_policy": {"fr": "Politique de confidentialité", "en": "Privacy policy"},
    "actor_self": {"fr": "Vous", "en": "You"},
    "actor_referent_doctor": {"fr": "Médecin référent", "en": "Referent doctor"},
    "actor_coordinator": {"fr": "Coordination", "en": "Coordination"},
    "actor_service": {"fr": "Plateforme", "en": "Platform"},
    "actor_dpo": {"fr": "Délégué à la protection des données", "en": "Data protection officer"},
    "actor_administrator": {"fr": "Administrateur", "en": "Administrator"},
    "actor_patient": {"fr": "Patient", "en": "Patient"},
    "action_read": {"fr": "consultation", "en": "read"},
    "action_create": {"fr": "création", "en": "created"},
    "action_update": {"fr": "modification", "en": "changed"},
    "action_download": {"fr": "téléchargement", "en": "downloaded"},
    "action_export": {"fr": "export", "en": "exported"},
    "action_lifecycle": {"fr": "archivage", "en": "archived"},
    "action_refused": {"fr": "accès refusé", "en": "access refused"},
    "object_case": {"fr": "dossier", "en": "case"},
    "object_form_answers": {"fr": "formulaire", "en": "form"},
    "object_document": {"fr": "document", "en": "document"},
    "object_message": {"fr": "message", "en": "message"},
    "object_report": {"fr": "avis", "en": "opinion"},
    "object_case_notes": {"fr": "commentaires", "en": "comments"},
    "purpose_own_space": {"fr": "votre espace", "en": "your space"},
    "purpose_case_review": {"fr": "examen par le médecin", "en": "review by the doctor"},
    "purpose_coordination": {"fr": "coordination", "en": "coordination"},
    "purpose_personal_assistant": {
        "fr": "assistance personnelle (mandat)",
        "en": "personal assistance (mandate)",
    },
    "purpose_platform_processing": {"fr": "traitement par la plateforme", "en": "platform processing"},
    "purpose_rights_request": {"fr": "demande d'exercice de droits", "en": "rights request"},
    "purpose_legal_archive": {"fr": "archive légale", "en": "legal archive"},
    "purpose_none_established": {"fr": "aucune finalité", "en": "no purpose"},
    "report_kind_opinion": {"fr": "Avis", "en": "Opinion"},
    "report_kind_addendum": {"fr": "Complément", "en": "Addendum"},
    "resolution_content_hidden": {"fr": "Masquer le contenu", "en": "Hide the content"},
    "resolution_no_action": {"fr": "Rien d'abusif", "en": "Nothing abusive"},
    "resolution_author_warned": {"fr": "Avertir l'auteur", "en": "Warn the author"},
    "resolution_account_closure_requested": {
        "fr": "Demander la clôture du compte",
        "en": "Request account closure",
    },
    "abuse_harassment": {"fr": "Harcèlement", "en": "Harassment"},
    "abuse_illegal_content": {"fr": "Contenu illicite", "en": "Illegal content"},
    "abuse_spam": {"fr": "Spam", "en": "Spam"},
    "abuse_other": {"fr": "Autre", "en": "Other"},
    "decline_unavailable": {"fr": "Indisponible", "en": "Unavailable"},
    "decline_conflict_of_interest": {"fr": "Conflit d'intérêts", "en": "Conflict of interest"},
    "decline_outside_expertise": {"fr": "Hors de mon expertise", "en": "Outside my expertise"},
    "decline_other": {"fr": "Autre", "en": "Other"},
    "prospect_invited": {"fr": "invité", "en": "invited"},
    "prospect_account_created": {"fr": "compte créé", "en": "account created"},
    "prospect_expired": {"fr": "expiré", "en": "expired"},
    "opt_true": {"fr": "Oui", "en": "Yes"},
    "opt_false": {"fr": "Non", "en": "No"},
    "opt_female": {"fr": "Femme", "en": "Female"},
    "opt_male": {"fr": "Homme", "en": "Male"},
    "opt_other": {"fr": "Autre", "en": "Other"},
    "opt_fr": {"fr": "Français", "en": "French"},
    "opt_en": {"fr": "Anglais", "en": "English"},
    "opt_unknown": {"fr": "Inconnu", "en": "Unknown"},
    "opt_none": {"fr": "Aucun", "en": "None"},
}

# Account set-up: authenticator, password, the people one files for.
MESSAGES.update(
    {
        "totp_title": {"fr": "Application d'authentification", "en": "Authenticator app"},
        "totp_first_login": {
            "fr": "Première connexion : l'accès aux données de santé demande une authentification forte. Enregistrez votre application d'authentification pour continuer.",
            "en": "First login: access to health data requires strong authentication. Register your authenticator app to continue.",
        },
        "totp_step_app": {
            "fr": "Ouvrez votre application d'authentification (FreeOTP, Aegis, Google Authenticator…) et ajoutez un compte.",
            "en": "Open your authenticator app (FreeOTP, Aegis, Google Authenticator…) and add an account.",
        },
        "totp_step_key": {
            "fr": "Saisissez la clé ci-dessous (ou le lien otpauth si votre application l'accepte).",
            "en": "Type the key below (or the otpauth link if your app accepts it).",
        },
        "totp_step_code": {
            "fr": "Entrez le code à 6 chiffres affiché par l'application.",
            "en": "Enter the 6-digit code the app shows.",
        },
        "totp_manual_key": {"fr": "Clé à saisir", "en": "Key to type"},
        "totp_uri": {"fr": "Lien de configuration", "en": "Set-up link"},
        "totp_bad_code": {
            "fr": "Ce code ne correspond pas. Vérifiez la clé saisie et l'heure du téléphone, puis réessayez.",
            "en": "This code does not match. Check the key you typed and your phone's clock, then try again.",
        },
        "totp_enrolled": {
            "fr": "Votre application d'authentification est enregistrée.",
            "en": "Your authenticator app is registered.",
        },
        "recovery_codes_title": {"fr": "Codes de secours", "en": "Recovery codes"},
        "recovery_codes_text": {
            "fr": "Conservez ces codes en lieu sûr : chacun permet une connexion si vous perdez votre téléphone. Ils ne seront plus affichés.",
            "en": "Keep these codes somewhere safe: each one lets you log in if you lose your phone. They will not be shown again.",
        },
        "continue": {"fr": "Continuer", "en": "Continue"},
        "change_password": {"fr": "Changer le mot de passe", "en": "Change the password"},
        "password_must_change": {
            "fr": "Pour votre sécurité, vous devez choisir un nouveau mot de passe avant de continuer.",
            "en": "For your security, you must choose a new password before going on.",
        },
        "current_password": {"fr": "Mot de passe actuel", "en": "Current password"},
        "new_password": {"fr": "Nouveau mot de passe", "en": "New password"},
        "confirm_password": {"fr": "Confirmez le nouveau mot de passe", "en": "Confirm the new password"},
        "passwords_differ": {
            "fr": "Les deux mots de passe ne sont pas identiques.",
            "en": "The two passwords differ.",
        },
        "current_password_wrong": {
            "fr": "Le mot de passe actuel est incorrect.",
            "en": "The current password is wrong.",
        },
        "password_changed": {"fr": "Votre mot de passe a été changé.", "en": "Your password was changed."},
        "beneficiaries": {"fr": "Personnes pour qui je dépose", "en": "People I file for"},
        "attach_beneficiary": {"fr": "Ajouter une personne", "en": "Add a person"},
        "beneficiary_kind": {"fr": "Je suis", "en": "I am"},
        "beneficiary_kind_minor": {"fr": "Parent d'un enfant mineur", "en": "Parent of a minor"},
        "beneficiary_kind_ward": {"fr": "Tuteur d'un majeur protégé", "en": "Guardian of a protected adult"},
        "beneficiary_kind_mandator": {"fr": "Mandaté par écrit", "en": "Mandated in writing"},
        "representation_ended": {"fr": "terminé", "en": "ended"},
        "birth_date": {"fr": "Date de naissance", "en": "Date of birth"},
        "parent_attests": {
            "fr": "Pour un enfant de moins de 15 ans : je garantis qu'il a été informé et qu'il consent",
            "en": "For a child under 15: I guarantee the child was informed and consents",
        },
        "mandate_valid_until": {"fr": "Fin du mandat (facultatif)", "en": "End of the mandate (optional)"},
        "mandate_valid_until_hint": {
            "fr": "Uniquement pour un mandat écrit à durée limitée.",
            "en": "Only for a written mandate with an end date.",
        },
        "proof_document": {"fr": "Justificatif", "en": "Proof"},
        "proof_document_hint": {
            "fr": "Livret de famille, jugement de tutelle ou copie du mandat (PDF, JPEG ou PNG).",
            "en": "Family record book, guardianship judgment or copy of the mandate (PDF, JPEG or PNG).",
        },
        "minor_consent_document": {
            "fr": "Consentement signé de l'enfant (à partir de 15 ans)",
            "en": "The child's signed consent (from 15)",
        },
        "minor_consent_document_hint": {
            "fr": "À partir de 15 ans, l'enfant consent lui-même : joignez son consentement signé (PDF, JPEG ou PNG).",
            "en": "From 15, the child consents alone: attach their signed consent (PDF, JPEG or PNG).",
        },
        "minor_consent_required": {
            "fr": "À partir de 15 ans, l'enfant consent lui-même : joignez son consentement signé.",
            "en": "From 15, the child consents alone: attach their signed consent.",
        },
        "attach": {"fr": "Ajouter", "en": "Add"},
        "beneficiary": {"fr": "Personne concernée", "en": "Person concerned"},
        "beneficiary_attached": {"fr": "La personne a été ajoutée.", "en": "The person was added."},
        "manage_beneficiaries": {
            "fr": "Ajouter une personne pour qui je dépose",
            "en": "Add a person I file for",
        },
        "choose_beneficiary": {"fr": "— pour moi-même —", "en": "— for myself —"},
    }
)

# Codes shown through a prefix (form options, statuses...) fall back to a readable label.
HUMANISED_PREFIXES = ("opt_", "status_", "area_", "kind_", "doc_", "object_", "actor_", "purpose_", "action_")


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
        if entry is None:
            prefix = next((p for p in HUMANISED_PREFIXES if key.startswith(p)), "")
            return key.removeprefix(prefix).replace("_", " ").capitalize() if prefix else key
        text = entry.get(locale, entry[DEFAULT])
        return text.format(**values) if values else text

    return translate


# --- data-subject rights: "Mes données" and the DPO's desk (issue 10, PC §14) -----------------
MESSAGES.update(
    {
        "rights_my_data": {"fr": "Mes données", "en": "My data"},
        "rights_intro": {
            "fr": "Vous pouvez accéder à vos données, les faire rectifier, effacer ou limiter, les récupérer dans un format lisible par une machine, vous opposer à un traitement, définir des directives sur leur sort après votre décès ou désigner un médecin qui y accédera pour vous. Le délégué à la protection des données vous répond dans un délai d'un mois, qui peut être prolongé de deux mois au plus ; vous en êtes alors informé(e).",
            "en": "You can access your data, have it rectified, erased or restricted, receive it in a machine-readable format, object to a processing, set directives for what happens to it after your death, or name a doctor who accesses it for you. The data protection officer answers within one month, which can be extended by two months at most; you are then told.",
        },
        "rights_representative_hint": {
            "fr": "Représentant légal d'un enfant ou d'un majeur protégé : vos demandes portent sur votre compte et sur les personnes pour qui vous déposez ; précisez dans la demande la personne concernée.",
            "en": "Legal representative of a child or a protected adult: your requests cover your account and the people you file for; say in the request which person it is about.",
        },
        "rights_my_requests": {"fr": "Mes demandes d'exercice de droits", "en": "My rights requests"},
        "rights_no_requests": {"fr": "Vous n'avez fait aucune demande.", "en": "You have made no request."},
        "rights_right": {"fr": "Droit exercé", "en": "Right exercised"},
        "rights_received": {"fr": "Reçue le", "en": "Received on"},
        "rights_answer_due": {"fr": "Réponse attendue au plus tard le", "en": "Answer due by"},
        "rights_answer": {"fr": "Réponse", "en": "Answer"},
        "rights_extended_by": {"fr": "prolongé de {n} mois", "en": "extended by {n} month(s)"},
        "rights_extension": {"fr": "Prolongation", "en": "Extension"},
        "rights_extended_on": {
            "fr": "délai prolongé de {n} mois le {date}",
            "en": "deadline extended by {n} month(s) on {date}",
        },
        "rights_new_request": {"fr": "Faire une demande", "en": "Make a request"},
        "rights_which_right": {
            "fr": "Quel droit souhaitez-vous exercer ?",
            "en": "Which right do you wish to exercise?",
        },
        "rights_details": {"fr": "Votre demande", "en": "Your request"},
        "rights_details_hint": {
            "fr": "Facultatif. Par exemple : les informations à rectifier, le traitement auquel vous vous opposez, vos directives. N'indiquez pas d'informations médicales inutiles.",
            "en": "Optional. For example: the information to correct, the processing you object to, your directives. Do not add medical information that is not needed.",
        },
        "rights_designated_doctor": {"fr": "Médecin désigné", "en": "Named doctor"},
        "rights_designated_doctor_hint": {
            "fr": "Uniquement pour désigner un médecin qui accédera à vos données de santé pour vous : son nom et son numéro RPPS (11 chiffres).",
            "en": "Only to name a doctor who will access your health data for you: their name and RPPS number (11 digits).",
        },
        "rights_doctor_name": {"fr": "Nom du médecin", "en": "Doctor's name"},
        "rights_doctor_rpps": {"fr": "Numéro RPPS du médecin", "en": "Doctor's RPPS number"},
        "rights_doctor_needed": {
            "fr": "indiquez le nom et le numéro RPPS du médecin désigné.",
            "en": "give the name and RPPS number of the doctor you name.",
        },
        "rights_recorded_as": {
            "fr": "Votre demande est enregistrée comme faite depuis votre espace, votre identité étant vérifiée par votre connexion.",
            "en": "Your request is recorded as made from your account, your identity being verified by your login.",
        },
        "rights_file": {"fr": "Envoyer la demande au DPO", "en": "Send the request to the DPO"},
        "rights_filed": {
            "fr": "Votre demande a été enregistrée. Le délégué à la protection des données vous répondra avant la date indiquée.",
            "en": "Your request was recorded. The data protection officer will answer before the date shown.",
        },
        "rights_choose_kind": {
            "fr": "choisissez le droit que vous exercez.",
            "en": "choose the right you exercise.",
        },
        "rights_reload_form": {
            "fr": "rechargez la page et réessayez.",
            "en": "reload the page and try again.",
        },
        "rights_details_too_long": {
            "fr": "votre texte dépasse {n} caractères.",
            "en": "your text is longer than {n} characters.",
        },
        "rights_erasure_needs_code": {
            "fr": "Par sécurité, un nouveau code vous est demandé avant une demande d'effacement.",
            "en": "For your safety, a new code is asked for before an erasure request.",
        },
        "rights_erasure_start": {
            "fr": "Demander l'effacement de mes données",
            "en": "Ask for my data to be erased",
        },
        "rights_erasure_kept": {
            "fr": "Ce que la loi nous oblige à conserver (factures, preuves de vos consentements, historique des accès) n'est pas effacé mais mis à l'écart jusqu'à la fin de sa durée légale ; la réponse vous le précisera. Une demande en cours d'examen doit être terminée ou annulée avant l'effacement.",
            "en": "What the law obliges us to keep (invoices, evidence of your consents, the access history) is not erased but set aside until its legal period ends; the answer tells you so. A request under review must be completed or cancelled before the erasure.",
        },
        "rights_erasure_reason": {"fr": "Motif de votre demande", "en": "Reason for your request"},
        "rights_erasure_reason_hint": {
            "fr": "Facultatif. Par exemple : les données ne sont plus nécessaires, vous retirez votre consentement.",
            "en": "Optional. For example: the data is no longer needed, you withdraw your consent.",
        },
        "rights_erasure_confirm": {
            "fr": "Je demande l'effacement de mes données et j'ai compris ce qui est conservé",
            "en": "I ask for my data to be erased and I understand what is kept",
        },
        "rights_erasure_file": {"fr": "Envoyer la demande d'effacement", "en": "Send the erasure request"},
        "rights_other_channels": {
            "fr": "Autres moyens de faire une demande",
            "en": "Other ways to make a request",
        },
        "rights_other_channels_text": {
            "fr": "Vous pouvez aussi écrire au délégué à la protection des données (privacy@carians.fr, ou CARIANS - deuxiemeavis.fr, 1 boulevard Pasteur 75015 Paris), passer par le médecin référent qui vous a rendu un avis, ou par l'hébergeur de données de santé (dpo@synten.com). Vous pouvez également saisir la CNIL.",
            "en": "You can also write to the data protection officer (privacy@carians.fr, or CARIANS - deuxiemeavis.fr, 1 boulevard Pasteur 75015 Paris), go through the referent doctor who gave you an opinion, or through the health-data host (dpo@synten.com). You can also refer the matter to the CNIL.",
        },
        "rights_channel": {"fr": "Reçue par", "en": "Received through"},
        "rights_verification": {"fr": "Identité vérifiée par", "en": "Identity verified by"},
        "rights_not_answered": {
            "fr": "Pas encore de réponse. Elle vous sera donnée au plus tard le {date}.",
            "en": "No answer yet. It will be given by {date} at the latest.",
        },
        "rights_answer_document": {"fr": "Lire la réponse", "en": "Read the answer"},
        "rights_export_not_online": {
            "fr": "Le téléchargement en ligne de l'archive de vos données n'est pas encore disponible : le délégué à la protection des données vous la transmet.",
            "en": "Downloading the archive of your data online is not available yet: the data protection officer sends it to you.",
        },
        "rights_kind_access": {"fr": "Accès à mes données", "en": "Access to my data"},
        "rights_kind_rectification": {"fr": "Rectification", "en": "Rectification"},
        "rights_kind_erasure": {"fr": "Effacement", "en": "Erasure"},
        "rights_kind_restriction": {"fr": "Limitation du traitement", "en": "Restriction of processing"},
        "rights_kind_portability": {"fr": "Portabilité", "en": "Portability"},
        "rights_kind_objection": {"fr": "Opposition", "en": "Objection"},
        "rights_kind_post_mortem_directives": {
            "fr": "Directives après mon décès",
            "en": "Directives after my death",
        },
        "rights_kind_designate_doctor_for_indirect_access": {
            "fr": "Désigner un médecin pour accéder à mes données",
            "en": "Name a doctor to access my data",
        },
        "rights_kind_complaint": {"fr": "Réclamation", "en": "Complaint"},
        "rights_hint_access": {
            "fr": "Savoir quelles données nous détenons sur vous et en recevoir la liste.",
            "en": "Know which data we hold about you and receive the list.",
        },
        "rights_hint_rectification": {
            "fr": "Faire corriger des informations inexactes vous concernant.",
            "en": "Have inaccurate information about you corrected.",
        },
        "rights_hint_erasure": {
            "fr": "Faire effacer vos données, pour un motif prévu par la réglementation.",
            "en": "Have your data erased, for a reason the regulation admits.",
        },
        "rights_hint_restriction": {
            "fr": "Faire limiter le traitement de vos données, pour un motif prévu par la réglementation.",
            "en": "Have the processing of your data restricted, for a reason the regulation admits.",
        },
        "rights_hint_portability": {
            "fr": "Récupérer les données que vous nous avez fournies dans un format lisible par une machine.",
            "en": "Receive the data you gave us in a machine-readable format.",
        },
        "rights_hint_objection": {
            "fr": "Vous opposer à un traitement de vos données.",
            "en": "Object to a processing of your data.",
        },
        "rights_hint_post_mortem_directives": {
            "fr": "Définir le sort de vos données après votre décès.",
            "en": "Decide what happens to your data after your death.",
        },
        "rights_hint_designate_doctor_for_indirect_access": {
            "fr": "Un médecin de votre choix accède à vos données de santé pour vous (indiquez-le ci-dessous).",
            "en": "A doctor of your choice accesses your health data for you (name them below).",
        },
        "rights_hint_complaint": {
            "fr": "Signaler un problème concernant vos données au délégué à la protection des données.",
            "en": "Report a problem about your data to the data protection officer.",
        },
        "rights_status_received": {"fr": "Reçue", "en": "Received"},
        "rights_status_in_progress": {"fr": "En cours de traitement", "en": "Being handled"},
        "rights_status_extended": {"fr": "Délai prolongé", "en": "Deadline extended"},
        "rights_status_answered": {"fr": "Répondue", "en": "Answered"},
        "rights_status_postponed": {
            "fr": "Effacement reporté (demande d'avis en cours)",
            "en": "Erasure postponed (opinion request in progress)",
        },
        "rights_outcome_granted": {"fr": "Demande satisfaite", "en": "Request granted"},
        "rights_outcome_partially_granted_restricted": {
            "fr": "Satisfaite en partie (données conservées par obligation légale mises à l'écart)",
            "en": "Partly granted (data kept by legal obligation set aside)",
        },
        "rights_outcome_refused": {"fr": "Demande refusée", "en": "Request refused"},
        "rights_outcome_identity_not_verified": {
            "fr": "Identité non vérifiée",
            "en": "Identity not verified",
        },
        "rights_outcome_refused_case_in_progress": {
            "fr": "Effacement reporté : une demande d'avis est en cours",
            "en": "Erasure postponed: an opinion request is in progress",
        },
        "rights_outcome_text_refused_case_in_progress": {
            "fr": "Votre dossier est nécessaire tant que votre demande d'avis est en cours. L'effacement sera fait dès qu'elle sera terminée ou annulée, et la réponse mise à jour.",
            "en": "Your file is needed while your opinion request is in progress. The erasure will be carried out as soon as it is completed or cancelled, and the answer updated.",
        },
        "rights_outcome_text_granted": {
            "fr": "Votre demande a été satisfaite.",
            "en": "Your request was granted.",
        },
        "rights_outcome_text_partially_granted_restricted": {
            "fr": "Ce que la loi nous oblige à conserver (factures, preuves de consentement) a été mis à l'écart au lieu d'être effacé ; le reste a été traité.",
            "en": "What the law obliges us to keep (invoices, evidence of consent) was set aside instead of being erased; the rest was handled.",
        },
        "rights_outcome_text_refused": {
            "fr": "Votre demande a été refusée pour un motif prévu par la réglementation. Vous pouvez saisir la CNIL.",
            "en": "Your request was refused on a ground the regulation admits. You can refer the matter to the CNIL.",
        },
        "rights_outcome_text_identity_not_verified": {
            "fr": "Votre identité n'a pas pu être vérifiée. Vous pouvez refaire la demande depuis votre espace.",
            "en": "Your identity could not be verified. You can make the request again from your account.",
        },
        "rights_channel_portal": {"fr": "votre espace en ligne", "en": "your online account"},
        "rights_channel_dpo_email": {"fr": "e-mail au DPO", "en": "email to the DPO"},
        "rights_channel_postal_mail": {"fr": "courrier postal", "en": "postal mail"},
        "rights_channel_referent_doctor": {"fr": "votre médecin référent", "en": "your referent doctor"},
        "rights_channel_health_data_host": {
            "fr": "l'hébergeur de données de santé",
            "en": "the health-data host",
        },
        "rights_verif_authenticated_session": {
            "fr": "connexion avec mot de passe et code",
            "en": "login with password and code",
        },
        "rights_verif_step_up": {"fr": "nouveau code de sécurité", "en": "a new security code"},
        "rights_verif_identity_document": {"fr": "pièce d'identité", "en": "identity document"},
        "rights_verif_referent_doctor_attestation": {
            "fr": "attestation du médecin référent",
            "en": "the referent doctor's attestation",
        },
        "rights_already_answered": {
            "fr": "Cette demande a déjà reçu une réponse.",
            "en": "This request has already been answered.",
        },
        "rights_extension_invalid": {
            "fr": "choisissez une prolongation d'un ou deux mois et son motif.",
            "en": "choose an extension of one or two months and its reason.",
        },
        "rights_outcome_invalid": {"fr": "choisissez la réponse donnée.", "en": "choose the answer given."},
        "rights_not_fulfillable": {
            "fr": "Ce type de demande est traité par le DPO puis sa réponse enregistrée.",
            "en": "This kind of request is handled by the DPO, then its answer recorded.",
        },
        "rights_workflow_unreachable": {
            "fr": "Le workflow de la demande est injoignable pour le moment : réessayez dans quelques instants.",
            "en": "The request's workflow cannot be reached right now: try again in a moment.",
        },
        "rights_workflow_started_retry": {
            "fr": "Le workflow de la demande vient d'être démarré : réessayez dans quelques instants.",
            "en": "The request's workflow was just started: try again in a moment.",
        },
        "rights_done_extended": {
            "fr": "Délai prolongé ; le workflow en informe la personne.",
            "en": "Deadline extended; the workflow tells the person.",
        },
        "rights_done_extended_no_workflow": {
            "fr": "Délai prolongé dans le registre, mais le workflow est injoignable : la personne n'a pas encore été prévenue.",
            "en": "Deadline extended in the register, but the workflow cannot be reached: the person has not been told yet.",
        },
        "rights_done_answered": {"fr": "Réponse enregistrée.", "en": "Answer recorded."},
        "rights_done_fulfilling": {
            "fr": "Traitement lancé : le workflow l'exécute puis enregistre la réponse.",
            "en": "Started: the workflow carries it out, then records the answer.",
        },
        "rights_done_held": {
            "fr": "Gel légal posé : les durées de conservation sont suspendues.",
            "en": "Legal hold placed: retention clocks are stopped.",
        },
        "rights_done_released": {"fr": "Gel légal levé.", "en": "Legal hold released."},
        "rights_done_provisional": {
            "fr": "Identifiants provisoires émis : l'ancien mot de passe ne fonctionne plus, toutes les sessions sont fermées et la personne a reçu le lien par e-mail.",
            "en": "Provisional credentials issued: the old password no longer works, every session has ended and the person was emailed the link.",
        },
        "dpo_credentials": {"fr": "Identifiants perdus ou volés", "en": "Lost or stolen credentials"},
        "dpo_credentials_hint": {
            "fr": "Sur demande de la personne (CGU §7.2.2), après vérification de son identité : le mot de passe est désactivé, les sessions fermées, et un lien lui est envoyé par e-mail, suivi d'un code par SMS. Si le téléphone a été perdu ou volé, indiquez le nouveau numéro : le code y sera envoyé.",
            "en": "At the person's request (terms §7.2.2), after checking who they are: the password is deactivated, sessions end, and a link is emailed to them, followed by an SMS code. If the phone was lost or stolen, enter the new number: the code goes there.",
        },
        "dpo_account_id": {"fr": "Identifiant du compte", "en": "Account id"},
        "dpo_new_phone": {
            "fr": "Nouveau numéro de mobile (facultatif)",
            "en": "New mobile number (optional)",
        },
        "dpo_identity_checked": {
            "fr": "J'ai vérifié l'identité de la personne qui le demande.",
            "en": "I have checked the identity of the person asking.",
        },
        "dpo_issue_provisional": {
            "fr": "Émettre des identifiants provisoires",
            "en": "Issue provisional credentials",
        },
        "dpo_identity_not_checked": {
            "fr": "Cochez la case une fois l'identité de la personne vérifiée.",
            "en": "Tick the box once the person's identity is checked.",
        },
        "dpo_account_not_found": {"fr": "Compte introuvable.", "en": "Account not found."},
        "dpo_desk": {"fr": "Demandes d'exercice de droits", "en": "Rights requests"},
        "dpo_open_requests": {"fr": "Demandes ouvertes, par échéance", "en": "Open requests, by deadline"},
        "dpo_counts": {
            "fr": "{total} demande(s) ouverte(s), dont {overdue} en retard et {at_risk} à échéance sous 7 jours.",
            "en": "{total} open request(s): {overdue} overdue, {at_risk} due within 7 days.",
        },
        "dpo_flag": {"fr": "Alerte", "en": "Flag"},
        "dpo_overdue": {"fr": "En retard", "en": "Overdue"},
        "dpo_at_risk": {"fr": "Échéance proche", "en": "Due soon"},
        "dpo_legal_holds": {"fr": "Gels légaux", "en": "Legal holds"},
        "dpo_legal_holds_hint": {
            "fr": "Tant qu'un gel est en vigueur, aucune donnée de la personne n'est archivée ni purgée.",
            "en": "While a hold is in force, none of the person's data is archived or purged.",
        },
        "dpo_subject": {"fr": "Personne concernée", "en": "Data subject"},
        "dpo_subject_id": {"fr": "Identifiant de la personne concernée", "en": "Data subject id"},
        "dpo_hold_reason": {"fr": "Motif du gel", "en": "Reason for the hold"},
        "dpo_reference": {"fr": "Référence externe", "en": "External reference"},
        "dpo_reference_hint": {
            "fr": "Numéro de procédure ou d'enquête ; aucune donnée personnelle.",
            "en": "Docket or inquiry number; no personal data.",
        },
        "dpo_placed_at": {"fr": "Posé le", "en": "Placed on"},
        "dpo_action": {"fr": "Action", "en": "Action"},
        "dpo_release": {"fr": "Lever le gel", "en": "Release the hold"},
        "dpo_released_on": {"fr": "levé le {date}", "en": "released on {date}"},
        "dpo_place_hold": {"fr": "Poser un gel légal", "en": "Place a legal hold"},
        "dpo_fulfil": {"fr": "Exécuter la demande", "en": "Carry out the request"},
        "dpo_fulfil_access": {
            "fr": "Produit l'export FHIR R4 des données de la personne et son résumé lisible, puis enregistre la réponse.",
            "en": "Produces the FHIR R4 export of the person's data and its readable summary, then records the answer.",
        },
        "dpo_fulfil_portability": {
            "fr": "Produit l'export FHIR R4 des données fournies par la personne, puis enregistre la réponse.",
            "en": "Produces the FHIR R4 export of the data the person provided, then records the answer.",
        },
        "dpo_fulfil_erasure": {
            "fr": "Met à l'écart ce que la loi impose de garder, efface le reste dans chaque service, puis enregistre la réponse.",
            "en": "Sets aside what the law requires to keep, erases the rest in every service, then records the answer.",
        },
        "dpo_fulfil_restriction": {
            "fr": "Limite le traitement des données de la personne dans chaque service, puis enregistre la réponse.",
            "en": "Restricts the processing of the person's data in every service, then records the answer.",
        },
        "dpo_fulfil_button": {"fr": "Lancer le traitement", "en": "Start"},
        "dpo_outcome": {"fr": "Réponse donnée", "en": "Answer given"},
        "dpo_record_answer": {"fr": "Enregistrer la réponse", "en": "Record the answer"},
        "dpo_answer_document": {
            "fr": "Document de réponse (identifiant, facultatif)",
            "en": "Answer document (id, optional)",
        },
        "dpo_answer_document_hint": {
            "fr": "L'identifiant du document de réponse déposé au dossier, s'il y en a un.",
            "en": "The id of the answer document filed in the dossier, if there is one.",
        },
        "dpo_extend": {"fr": "Prolonger le délai", "en": "Extend the deadline"},
        "dpo_extend_hint": {
            "fr": "Deux mois au plus au total ; la personne est informée de la nouvelle échéance et du motif.",
            "en": "Two months at most in total; the person is told of the new deadline and the reason.",
        },
        "dpo_extend_months": {"fr": "Durée", "en": "Length"},
        "dpo_months": {"fr": "{n} mois", "en": "{n} month(s)"},
        "dpo_extend_reason": {"fr": "Motif", "en": "Reason"},
        "extension_reason_complexity": {"fr": "Complexité de la demande", "en": "Complexity of the request"},
        "extension_reason_number_of_requests": {
            "fr": "Nombre de demandes reçues",
            "en": "Number of requests received",
        },
        "hold_reason_litigation": {"fr": "Contentieux", "en": "Litigation"},
        "hold_reason_judicial_request": {"fr": "Réquisition judiciaire", "en": "Judicial request"},
        "hold_reason_regulator_inquiry": {"fr": "Contrôle de la CNIL", "en": "Supervisory authority inquiry"},
        "hold_reason_indemnity_dispute": {"fr": "Litige d'indemnisation", "en": "Indemnity dispute"},
        "hold_invalid": {
            "fr": "indiquez la personne concernée et le motif du gel.",
            "en": "give the data subject and the reason for the hold.",
        },
        "hold_subject_not_found": {"fr": "Personne concernée introuvable.", "en": "Data subject not found."},
    }
)

# Issue 10: the person downloads the archive answering their access or portability request.
MESSAGES.update(
    {
        "rights_export_download": {
            "fr": "Télécharger l'archive de mes données (zip)",
            "en": "Download the archive of my data (zip)",
        },
        "rights_export_contents": {
            "fr": "Elle contient vos données au format FHIR R4 (JSON, lisible par une machine), un résumé lisible et vos documents.",
            "en": "It holds your data as FHIR R4 (JSON, machine-readable), a readable summary and your documents.",
        },
        "rights_export_step_up": {
            "fr": "Un nouveau code de sécurité vous sera demandé.",
            "en": "You will be asked for a new security code.",
        },
        "rights_export_ask_dpo": {
            "fr": "Cette réponse a été donnée avant que l'archive de vos données ne soit téléchargeable ici : le délégué à la protection des données vous la transmet sur demande.",
            "en": "This answer was given before the archive of your data could be downloaded here: the data protection officer sends it to you on request.",
        },
        "rights_export_not_ready": {
            "fr": "L'archive de vos données est en cours de vérification antivirus. Réessayez dans quelques minutes.",
            "en": "The archive of your data is being checked for malware. Try again in a few minutes.",
        },
        "rights_answer_available": {"fr": "réponse à télécharger", "en": "answer to download"},
    }
)

# "Mon compte": changing the email or the mobile phone (ACC-06), each confirmed by a code sent to it.
MESSAGES.update(
    {
        "contact_title": {"fr": "Adresse e-mail et téléphone", "en": "Email address and phone"},
        "contact_account_text": {
            "fr": "Votre adresse e-mail sert à vous connecter ; les codes de connexion sont envoyés par SMS à votre téléphone mobile.",
            "en": "Your email address is your login; login codes are sent by SMS to your mobile phone.",
        },
        "contact_change_link": {
            "fr": "Modifier mon adresse e-mail ou mon téléphone",
            "en": "Change my email address or phone",
        },
        "contact_phone_on_file": {"fr": "Téléphone mobile", "en": "Mobile phone"},
        "contact_step_up_text": {
            "fr": "Pour protéger votre compte, nous vous envoyons d'abord un code sur votre téléphone actuel.",
            "en": "To protect your account, we first send a code to your current phone.",
        },
        "contact_step_up_needed": {
            "fr": "Un nouveau code de sécurité est nécessaire avant cette modification.",
            "en": "A new security code is needed before this change.",
        },
        "contact_new_email": {"fr": "Nouvelle adresse e-mail", "en": "New email address"},
        "contact_email_hint": {
            "fr": "Un code vous sera envoyé à cette adresse ; elle ne remplace votre identifiant de connexion qu'une fois le code saisi. L'ancienne et la nouvelle adresse sont alors prévenues.",
            "en": "A code will be sent to this address; it replaces your login only once the code is entered. The old and the new address are then told.",
        },
        "contact_change_email": {
            "fr": "Envoyer un code à cette adresse",
            "en": "Send a code to this address",
        },
        "contact_email_code_sent": {
            "fr": "Un code à 6 chiffres a été envoyé à {email}. Ce n'est pas la bonne adresse ? Annulez et recommencez.",
            "en": "A 6-digit code was sent to {email}. Not the right address? Cancel and start again.",
        },
        "contact_confirm_email_text": {
            "fr": "Saisissez le code reçu à la nouvelle adresse. D'ici là, votre adresse actuelle reste votre identifiant de connexion.",
            "en": "Enter the code received at the new address. Until then, your current address stays your login.",
        },
        "contact_new_email_code": {
            "fr": "Code reçu à la nouvelle adresse e-mail",
            "en": "Code received at the new email address",
        },
        "contact_email_same": {
            "fr": "C'est déjà l'adresse e-mail enregistrée.",
            "en": "This is already the email address on file.",
        },
        "contact_too_many_email_codes": {
            "fr": "Trop de codes envoyés à de nouvelles adresses. Réessayez dans une heure.",
            "en": "Too many codes sent to new addresses. Try again in an hour.",
        },
        "contact_new_phone": {"fr": "Nouveau téléphone mobile", "en": "New mobile phone"},
        "contact_phone_hint": {
            "fr": "Un code vous sera envoyé par SMS à ce numéro ; il ne remplace l'ancien qu'une fois le code saisi.",
            "en": "A code will be sent by SMS to this number; it replaces the old one only once the code is entered.",
        },
        "contact_change_phone": {"fr": "Envoyer un code à ce numéro", "en": "Send a code to this number"},
        "contact_confirm_text": {
            "fr": "Saisissez le code reçu sur le nouveau numéro. D'ici là, votre ancien numéro reste utilisé.",
            "en": "Enter the code received on the new number. Until then, your old number stays in use.",
        },
        "contact_new_phone_code": {
            "fr": "Code reçu sur le nouveau numéro",
            "en": "Code received on the new number",
        },
        "contact_cancel": {"fr": "Annuler ce changement", "en": "Cancel this change"},
        "contact_email_invalid": {"fr": "Adresse e-mail non valide.", "en": "Invalid email address."},
        "contact_email_taken": {
            "fr": "Cette adresse e-mail est déjà utilisée par un autre compte.",
            "en": "This email address is already used by another account.",
        },
        "contact_phone_invalid": {
            "fr": "Numéro non valide : indiquez un numéro de téléphone mobile (les codes sont envoyés par SMS).",
            "en": "Invalid number: give a mobile phone number (codes are sent by SMS).",
        },
        "contact_phone_same": {
            "fr": "C'est déjà le numéro enregistré.",
            "en": "This is already the number on file.",
        },
        "contact_too_many_codes": {
            "fr": "Trop de codes envoyés à de nouveaux numéros. Réessayez dans une heure.",
            "en": "Too many codes sent to new numbers. Try again in an hour.",
        },
        "contact_start_again": {
            "fr": "Ce code a expiré ou a été trop souvent mal saisi : recommencez.",
            "en": "This code expired or was mistyped too often: start again.",
        },
        "contact_email_changed": {
            "fr": "Votre adresse e-mail a été modifiée. Un message a été envoyé à l'ancienne et à la nouvelle adresse.",
            "en": "Your email address was changed. A message was sent to the old and the new address.",
        },
        "contact_phone_changed": {
            "fr": "Votre numéro de téléphone a été modifié. Les prochains codes seront envoyés au nouveau numéro.",
            "en": "Your phone number was changed. The next codes will be sent to the new number.",
        },
    }
)

# --- lost, stolen or forgotten credentials (ACC-08) and invitations (ACC-15) -----------------
MESSAGES.update(
    {
        "forgot_password": {"fr": "Mot de passe oublié ?", "en": "Forgot your password?"},
        "pwreset_title": {"fr": "Réinitialiser mon mot de passe", "en": "Reset my password"},
        "pwreset_intro": {
            "fr": "Indiquez l'adresse e-mail de votre compte : nous vous enverrons un lien pour choisir un nouveau mot de passe. Un code vous sera ensuite envoyé par SMS au téléphone mobile enregistré.",
            "en": "Enter your account's email address: we will send you a link to choose a new password. A code will then be sent by SMS to the mobile phone on file.",
        },
        "pwreset_unblocks": {
            "fr": "Votre compte est bloqué (trop d'essais, ou identifiants déclarés perdus ou volés) ? Cette procédure le débloque.",
            "en": "Is your account blocked (too many attempts, or credentials declared lost or stolen)? This procedure unblocks it.",
        },
        "pwreset_send_link": {"fr": "Recevoir le lien", "en": "Send me the link"},
        "pwreset_back_to_login": {"fr": "Retour à la connexion", "en": "Back to log in"},
        "pwreset_sent_title": {"fr": "Consultez vos e-mails", "en": "Check your emails"},
        "pwreset_sent": {
            "fr": "Si un compte existe pour cette adresse, un e-mail contenant un lien de réinitialisation est en route. Le lien est valable {minutes} minutes et ne sert qu'une fois.",
            "en": "If an account exists for this address, an email with a reset link is on its way. The link is valid for {minutes} minutes and works once.",
        },
        "pwreset_sent_next": {
            "fr": "Ouvrez le lien, puis saisissez le code reçu par SMS et votre nouveau mot de passe.",
            "en": "Open the link, then enter the code received by SMS and your new password.",
        },
        "pwreset_sent_nothing": {
            "fr": "Rien reçu ? Vérifiez vos courriers indésirables et l'adresse saisie, puis refaites une demande dans quelques minutes.",
            "en": "Nothing received? Check your spam folder and the address you typed, then ask again in a few minutes.",
        },
        "pwreset_new_title": {"fr": "Choisir un nouveau mot de passe", "en": "Choose a new password"},
        "pwreset_send_code_text": {
            "fr": "Pour vérifier qu'il s'agit bien de vous, nous envoyons un code à 6 chiffres par SMS au téléphone mobile enregistré sur votre compte.",
            "en": "To check that it is you, we send a 6-digit code by SMS to the mobile phone on file for your account.",
        },
        "pwreset_send_code": {"fr": "Recevoir le code par SMS", "en": "Send me the code by SMS"},
        "pwreset_code_text": {
            "fr": "Saisissez-le avec votre nouveau mot de passe.",
            "en": "Enter it with your new password.",
        },
        "pwreset_submit": {"fr": "Enregistrer le nouveau mot de passe", "en": "Save the new password"},
        "pwreset_no_code": {
            "fr": "Le code n'arrive pas ou a expiré ?",
            "en": "The code does not arrive or has expired?",
        },
        "pwreset_ask_again": {"fr": "Demander un nouveau lien", "en": "Ask for a new link"},
        "pwreset_resend": {"fr": "Renvoyer un code par SMS", "en": "Send a new code by SMS"},
        "pwreset_resent": {
            "fr": "Un nouveau code vient d'être envoyé ; le précédent ne fonctionne plus.",
            "en": "A new code has just been sent; the previous one no longer works.",
        },
        "pwreset_resend_exhausted": {
            "fr": "Trop de codes ont été envoyés pour cette réinitialisation, ou le dernier vient de partir. Patientez une minute, ou demandez un nouveau lien.",
            "en": "Too many codes were sent for this reset, or the last one has just gone. Wait a minute, or ask for a new link.",
        },
        "pwreset_start": {"fr": "Réinitialiser mon mot de passe", "en": "Reset my password"},
        "pwreset_done": {
            "fr": "Votre mot de passe a été changé et votre compte est débloqué. Vous pouvez vous connecter.",
            "en": "Your password was changed and your account is unblocked. You can log in.",
        },
        "pwreset_link_invalid": {
            "fr": "Ce lien de réinitialisation n'est plus valable (expiré, déjà utilisé ou incomplet). Demandez-en un nouveau ci-dessous.",
            "en": "This reset link is no longer valid (expired, already used or incomplete). Ask for a new one below.",
        },
        "pwreset_ended": {
            "fr": "Cette réinitialisation a expiré ou est terminée. Demandez un nouveau lien ci-dessous.",
            "en": "This reset has expired or is over. Ask for a new link below.",
        },
        "pwreset_code_format": {
            "fr": "Le code comporte exactement 6 chiffres.",
            "en": "The code has exactly 6 digits.",
        },
        "pw_rule_length": {
            "fr": "Le mot de passe doit compter de 8 à 25 caractères.",
            "en": "The password must be 8 to 25 characters long.",
        },
        "pw_rule_classes": {
            "fr": "Le mot de passe doit contenir des majuscules, des minuscules, et des chiffres et/ou des caractères spéciaux.",
            "en": "The password needs upper case, lower case, and digits and/or special characters.",
        },
        "pw_rule_common": {
            "fr": "Ce mot de passe est trop courant ou connu à la suite d'une fuite de données : choisissez-en un autre.",
            "en": "This password is too common or known from a data breach: choose another one.",
        },
        "pw_rule_control": {
            "fr": "Le mot de passe ne doit pas contenir de caractères de contrôle.",
            "en": "The password must not contain control characters.",
        },
        "pw_rule_other": {
            "fr": "Ce mot de passe n'est pas accepté : choisissez-en un autre.",
            "en": "This password is not accepted: choose another one.",
        },
        "cred_loss_title": {
            "fr": "J'ai perdu mes identifiants / on me les a volés",
            "en": "I lost my credentials / they were stolen",
        },
        "cred_loss_account_text": {
            "fr": "Mot de passe ou téléphone perdu, ou quelqu'un d'autre a pu les obtenir ? Bloquez votre compte immédiatement.",
            "en": "Lost your password or phone, or someone else may have them? Block your account at once.",
        },
        "cred_loss_intro": {
            "fr": "Déclarer la perte ou le vol bloque votre compte immédiatement : toutes vos sessions sont fermées, sur tous vos appareils, et plus personne ne peut se connecter. Vous le débloquerez en choisissant un nouveau mot de passe (lien reçu par e-mail, puis code reçu par SMS).",
            "en": "Declaring the loss or theft blocks your account at once: every session ends, on all your devices, and nobody can log in any more. You unblock it by choosing a new password (a link received by email, then a code received by SMS).",
        },
        "cred_loss_kind": {"fr": "Que s'est-il passé ?", "en": "What happened?"},
        "cred_loss_kind_loss": {
            "fr": "Je les ai perdus (mot de passe oublié ailleurs, téléphone perdu…)",
            "en": "I lost them (password written down somewhere, phone lost…)",
        },
        "cred_loss_kind_theft": {
            "fr": "On me les a volés, ou quelqu'un d'autre les connaît",
            "en": "They were stolen, or someone else knows them",
        },
        "cred_loss_confirm": {
            "fr": "Je confirme : bloquer mon compte et fermer toutes mes sessions maintenant",
            "en": "I confirm: block my account and end all my sessions now",
        },
        "cred_loss_submit": {"fr": "Bloquer mon compte", "en": "Block my account"},
        "cred_loss_kind_required": {
            "fr": "Indiquez ce qui s'est passé : perte ou vol.",
            "en": "Say what happened: loss or theft.",
        },
        "cred_loss_confirm_required": {
            "fr": "Cochez la case pour confirmer le blocage.",
            "en": "Tick the box to confirm the block.",
        },
        "cred_loss_done_title": {"fr": "Votre compte est bloqué", "en": "Your account is blocked"},
        "cred_loss_done": {
            "fr": "Votre déclaration est enregistrée : votre compte est bloqué et toutes vos sessions sont fermées, sur tous vos appareils.",
            "en": "Your declaration is recorded: your account is blocked and every session has ended, on all your devices.",
        },
        "cred_loss_done_next": {
            "fr": "Pour le débloquer, choisissez un nouveau mot de passe : demandez un lien de réinitialisation par e-mail, puis saisissez le code reçu par SMS.",
            "en": "To unblock it, choose a new password: ask for a reset link by email, then enter the code received by SMS.",
        },
        "signup_invited": {
            "fr": "Votre médecin vous invite à créer votre compte.",
            "en": "Your doctor invites you to create your account.",
        },
        "signup_invitation_invalid": {
            "fr": "Ce lien d'invitation n'est plus valable (expiré ou déjà utilisé). Vous pouvez tout de même créer votre compte.",
            "en": "This invitation link is no longer valid (expired or already used). You can still create your account.",
        },
    }
)
