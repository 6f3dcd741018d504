"""Card payment through a payment service provider (BIL-02, BIL-06): the card is typed on
the PSP's hosted page; the platform only signs the request and verifies the answer."""
