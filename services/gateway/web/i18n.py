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
