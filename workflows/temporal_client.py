"""Connecting to Temporal the same way everywhere: pydantic payloads, encrypted by the
payload codec, and tracing."""

from __future__ import annotations

import dataclasses

from temporalio.client import Client
from temporalio.contrib.opentelemetry import TracingInterceptor
from temporalio.contrib.pydantic import pydantic_data_converter
from temporalio.converter import DataConverter

from workflows.codec import EncryptionCodec, load_keyring
from workflows.settings import TemporalSettings


def payload_codec(settings: TemporalSettings) -> EncryptionCodec:
    return EncryptionCodec(
        load_keyring(settings.payload_keys_dir, settings.payload_key_id, settings.payload_key_autocreate)
    )


def data_converter(settings: TemporalSettings) -> DataConverter:
    """Pydantic payloads sealed with AES-256-GCM (see workflows/codec.py)."""
    return dataclasses.replace(pydantic_data_converter, payload_codec=payload_codec(settings))


def with_data_converter(client: Client, settings: TemporalSettings) -> Client:
    """The same connection with the platform's converter (payloads sealed)."""
    config = client.config()
    config["data_converter"] = data_converter(settings)
    return Client(**config)


async def connect(settings: TemporalSettings) -> Client:
    return await Client.connect(
        settings.address,
        namespace=settings.namespace,
        data_converter=data_converter(settings),
        interceptors=[TracingInterceptor()],
    )
