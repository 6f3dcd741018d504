"""Web gateway (FastAPI): the patient, doctor and coordinator portals and the JSON API."""
