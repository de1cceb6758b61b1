"""AWS KMS as the key provider: a KMS key wraps and unwraps the data keys of stored objects.

Data keys are made locally, one per object, as with local master keys. The
provider sends each one to KMS Encrypt under the current KMS key, and the
returned ciphertext blob goes into the object's key slot. Reading an object
sends the blob to KMS Decrypt. The master key never leaves KMS.

The key id in an object header is the ARN of the KMS key, resolved with
DescribeKey when the provider is built, so an alias that is later pointed at
another key does not change which key an object needs. An ARN names the
key's account and region but contains no secret. Every request carries an
encryption context that binds the wrapped data key to dicomvault and to that
ARN. KMS records the context in CloudTrail, and key policies can require it.

Credentials come from boto3's default chain: the AWS environment variables,
the shared credentials and config files (AWS_PROFILE), or the instance or
container role. No dicomvault setting contains them, so a worker process
builds the same provider from the settings alone.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from dicomvault.config import EncryptionSettings
from dicomvault.encryption.keys import (
    LOCAL_KEY_ID_PREFIX,
    KeyServiceError,
    KeySetupError,
    LocalKeyProvider,
    UnknownKeyError,
    UnwrapError,
    read_previous_keys,
)

if TYPE_CHECKING:
    from types_boto3_kms import KMSClient

LOGGER = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 10.0
READ_TIMEOUT_SECONDS = 30.0
# Connections kept open to KMS; the default of dimse.max_associations is 32.
MAX_POOL_CONNECTIONS = 32
# Unwrapped data keys kept in memory, so that reading the frames of one
# object one request at a time costs one Decrypt request, not one per frame.
UNWRAP_CACHE_ENTRIES = 1024
UNWRAP_CACHE_SECONDS = 300.0
# KMS rejects a CiphertextBlob outside these lengths before looking at it.
MIN_CIPHERTEXT_BYTES, MAX_CIPHERTEXT_BYTES = 1, 6144
# The encryption context of every Encrypt and Decrypt request.
CONTEXT_PURPOSE = "purpose"
CONTEXT_PURPOSE_VALUE = "dicomvault data key"
CONTEXT_KEY_ID = "master-key-id"

CURRENT_KEY_SETTING = "encryption.kms_key_id"
PREVIOUS_KEYS_SETTING = "encryption.kms_previous_key_ids"
LOCAL_PREVIOUS_KEYS_SETTING = (
    "encryption.previous_key_files (or DICOMVAULT_ENCRYPTION_PREVIOUS_KEYS)"
)
_PERMISSIONS = "kms:DescribeKey, kms:Encrypt and kms:Decrypt"
_CREDENTIALS_HINT = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, choose a profile with AWS_PROFILE, "
    "or run with an instance or container role"
)


def new_kms_client(settings: EncryptionSettings) -> KMSClient:
    """Return a KMS client for the endpoint, region and retry settings of ``settings``.

    Empty settings leave the choice to boto3: AWS_ENDPOINT_URL_KMS or
    AWS_ENDPOINT_URL, AWS_REGION or AWS_DEFAULT_REGION, and the profile.
    Throttling (ThrottlingException), server errors and connection errors
    are retried with exponential backoff, up to ``kms_max_attempts``.
    """
    # Typed Any: the stubs want literals, and the settings were checked against them.
    retries: Any = {
        "mode": settings.kms_retry_mode,
        "total_max_attempts": settings.kms_max_attempts,
    }
    config = Config(
        region_name=settings.kms_region or None,
        retries=retries,
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=READ_TIMEOUT_SECONDS,
        max_pool_connections=MAX_POOL_CONNECTIONS,
    )
    session = boto3.session.Session()
    client: KMSClient = session.client(
        "kms", endpoint_url=settings.kms_endpoint_url or None, config=config
    )
    return client


@dataclasses.dataclass(frozen=True)
class KmsKey:
    """A KMS key: its ARN, which is its key id in object headers, and how it was configured."""

    arn: str
    reference: str  # the key id, alias name or ARN of the setting
    setting: str

    def describe(self) -> str:
        """Return the ARN, with the configured reference when that differs, for messages."""
        if self.reference == self.arn:
            return self.arn
        return f"{self.arn} ({self.reference})"


class KmsKeyProvider:
    """A key provider that wraps data keys with KMS Encrypt and unwraps them with Decrypt.

    Earlier KMS keys still unwrap, and so do earlier local master keys, so
    that ``dicomvault keys rotate`` can move an archive from local keys to
    KMS. Unwrapped data keys are cached in memory for UNWRAP_CACHE_SECONDS,
    so a key disabled in KMS stops reads of recently read objects only
    after that time.

    The provider is safe to use from several threads.

    Parameters
    ----------
    client : KMSClient
        The client of the region and endpoint of the keys.
    current : KmsKey
        The key new data keys are wrapped under.
    previous : sequence of KmsKey
        Earlier keys that still unwrap.
    earlier_local : LocalKeyProvider, optional
        Earlier local master keys that still unwrap.
    """

    def __init__(
        self,
        client: KMSClient,
        current: KmsKey,
        previous: Sequence[KmsKey] = (),
        earlier_local: LocalKeyProvider | None = None,
    ) -> None:
        self.client = client
        self._current = current
        self._keys = {current.arn: current}
        for key in previous:
            self._keys.setdefault(key.arn, key)
        self._local = earlier_local
        self._cache: collections.OrderedDict[tuple[str, bytes], tuple[bytes, float]] = (
            collections.OrderedDict()
        )
        self._cache_lock = threading.Lock()

    @property
    def current_key_id(self) -> str:
        """The ARN of the KMS key new data keys are wrapped under."""
        return self._current.arn

    @property
    def key_ids(self) -> tuple[str, ...]:
        """The ARNs of the current and earlier KMS keys, then the ids of earlier local keys."""
        local = self._local.key_ids if self._local is not None else ()
        return (*self._keys, *local)

    @property
    def current_key_setting(self) -> str:
        """The setting that names the current KMS key."""
        return CURRENT_KEY_SETTING

    def earlier_key_setting(self, key_id: str) -> str:
        """Return the setting that lists ``key_id`` as an earlier key: local or KMS."""
        if key_id.startswith(LOCAL_KEY_ID_PREFIX):
            return LOCAL_PREVIOUS_KEYS_SETTING
        return PREVIOUS_KEYS_SETTING

    def wrap(self, data_key: bytes) -> bytes:
        """Encrypt ``data_key`` with KMS under the current key; see KeyProvider."""
        key = self._current
        try:
            response = self.client.encrypt(
                KeyId=key.arn, Plaintext=data_key, EncryptionContext=_context(key.arn)
            )
        except (ClientError, BotoCoreError) as exc:
            raise KeyServiceError(_service_failure("Encrypt", key, exc, self.client)) from None
        return response["CiphertextBlob"]

    def unwrap(self, key_id: str, wrapped: bytes) -> bytes:
        """Decrypt a data key wrapped under the KMS or local key ``key_id``; see KeyProvider."""
        if key_id.startswith(LOCAL_KEY_ID_PREFIX) and self._local is not None:
            return self._local.unwrap(key_id, wrapped)
        key = self._keys.get(key_id)
        if key is None:
            raise UnknownKeyError(f"master key {key_id} is not configured")
        if not MIN_CIPHERTEXT_BYTES <= len(wrapped) <= MAX_CIPHERTEXT_BYTES:
            raise UnwrapError(
                f"the data key wrapped under KMS key {key_id} has {len(wrapped)} bytes, and "
                f"KMS accepts {MIN_CIPHERTEXT_BYTES} to {MAX_CIPHERTEXT_BYTES}; its bytes "
                "were changed"
            )

        cached = self._cached(key_id, wrapped)
        if cached is not None:
            return cached
        try:
            response = self.client.decrypt(
                KeyId=key.arn, CiphertextBlob=wrapped, EncryptionContext=_context(key.arn)
            )
        except ClientError as exc:
            if error_code(exc) in ("InvalidCiphertextException", "IncorrectKeyException"):
                raise UnwrapError(
                    f"the data key does not authenticate under KMS key {key.describe()}: "
                    "another key wrapped it, or its bytes were changed"
                ) from None
            raise KeyServiceError(_service_failure("Decrypt", key, exc, self.client)) from None
        except BotoCoreError as exc:
            raise KeyServiceError(_service_failure("Decrypt", key, exc, self.client)) from None
        data_key = response["Plaintext"]
        self._remember(key_id, wrapped, data_key)
        return data_key

    def describe(self) -> str:
        """Return the current KMS key, the number of earlier keys, and the endpoint."""
        earlier = len(self.key_ids) - 1
        return (
            f"KMS key {self._current.describe()} and {earlier} earlier "
            f"{'key' if earlier == 1 else 'keys'} at "
            f"{_endpoint(self.client)}"
        )

    def _cached(self, key_id: str, wrapped: bytes) -> bytes | None:
        now = time.monotonic()
        with self._cache_lock:
            entry = self._cache.get((key_id, wrapped))
            if entry is None:
                return None
            data_key, expires = entry
            if expires <= now:
                del self._cache[(key_id, wrapped)]
                return None
            self._cache.move_to_end((key_id, wrapped))
            return data_key

    def _remember(self, key_id: str, wrapped: bytes, data_key: bytes) -> None:
        expires = time.monotonic() + UNWRAP_CACHE_SECONDS
        with self._cache_lock:
            self._cache[(key_id, wrapped)] = (data_key, expires)
            self._cache.move_to_end((key_id, wrapped))
            while len(self._cache) > UNWRAP_CACHE_ENTRIES:
                self._cache.popitem(last=False)


def load_kms_provider(
    settings: EncryptionSettings, client: KMSClient | None = None
) -> KmsKeyProvider:
    """Build the KMS provider of ``settings``, checking each KMS key with DescribeKey.

    ``client`` defaults to one built by :func:`new_kms_client`.

    Raises
    ------
    KeySetupError
        If a KMS key is not found, not accessible, not enabled, or not a
        symmetric encryption key. Also if KMS cannot be reached, no
        credentials are found, or an earlier local key file is missing,
        unsafe or malformed.
    """
    if client is None:
        client = new_kms_client(settings)
    current = resolve_kms_key(client, settings.kms_key_id, CURRENT_KEY_SETTING)
    previous = [
        resolve_kms_key(client, reference, PREVIOUS_KEYS_SETTING)
        for reference in settings.kms_previous_key_ids
    ]
    for key in previous:
        if key.arn == current.arn:
            LOGGER.warning(
                "The earlier KMS key %s in %s is the current key; it is not needed there",
                key.describe(),
                PREVIOUS_KEYS_SETTING,
            )
    local = read_previous_keys(settings)
    earlier_local = LocalKeyProvider(local[0], local[1:]) if local else None
    provider = KmsKeyProvider(client, current, previous, earlier_local)
    LOGGER.info("Master keys: %s", provider.describe())
    return provider


def resolve_kms_key(client: KMSClient, reference: str, setting: str) -> KmsKey:
    """Return the KMS key that ``reference`` (a key id, alias name or ARN) names.

    ``setting`` names the setting that contains ``reference``, for messages.

    Raises
    ------
    KeySetupError
        If the key is not found, not accessible, not enabled, or not a
        symmetric encryption key, or if KMS cannot be reached.
    """
    where = f"KMS key {reference} ({setting})"
    try:
        metadata = client.describe_key(KeyId=reference)["KeyMetadata"]
    except NoCredentialsError:
        raise KeySetupError(
            f"No AWS credentials found to use {where}; {_CREDENTIALS_HINT}"
        ) from None
    except ClientError as exc:
        code, message = error_code(exc), _error_message(exc)
        if code == "NotFoundException":
            raise KeySetupError(
                f"{where} not found in region {client.meta.region_name} at {_endpoint(client)}; "
                "correct the key id, alias name or ARN, or the region (encryption.kms_region)"
            ) from None
        if code == "AccessDeniedException":
            raise KeySetupError(
                f"Access to {where} is denied ({message}); grant the archive's AWS identity "
                f"{_PERMISSIONS} on the key"
            ) from None
        raise KeySetupError(f"Cannot use {where}: {code}: {message}") from None
    except BotoCoreError as exc:
        raise KeySetupError(
            f"Cannot reach KMS at {_endpoint(client)} to check {where}: {exc}; check "
            "encryption.kms_endpoint_url, encryption.kms_region and the network"
        ) from None

    arn = metadata["Arn"]
    state = metadata.get("KeyState", "Enabled")
    if state == "Disabled":
        raise KeySetupError(
            f"{where} is disabled, so it cannot wrap or unwrap data keys; enable it "
            f"('aws kms enable-key --key-id {arn}'), or remove it from {setting} if no "
            "stored file needs it"
        )
    if state == "PendingDeletion":
        raise KeySetupError(
            f"{where} is scheduled for deletion; cancel the deletion ('aws kms "
            f"cancel-key-deletion --key-id {arn}') and enable it, because files under it "
            "can never be read once it is deleted"
        )
    if state != "Enabled":
        raise KeySetupError(f"{where} is in state {state}, and only an enabled key can be used")
    # Absent values are KMS's defaults; moto 5 leaves KeyUsage out of key metadata.
    usage = metadata.get("KeyUsage", "ENCRYPT_DECRYPT")
    spec = metadata.get("KeySpec", "SYMMETRIC_DEFAULT")
    if usage != "ENCRYPT_DECRYPT" or spec != "SYMMETRIC_DEFAULT":
        raise KeySetupError(
            f"{where} has key usage {usage} and key spec {spec}; a master key must be a "
            "symmetric encryption key (ENCRYPT_DECRYPT, SYMMETRIC_DEFAULT)"
        )
    return KmsKey(arn, reference, setting)


def error_code(exc: ClientError) -> str:
    """Return the AWS error code of ``exc``, such as ThrottlingException."""
    return str(exc.response.get("Error", {}).get("Code", ""))


def _error_message(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Message", "")) or "no message"


def _context(key_id: str) -> dict[str, str]:
    return {CONTEXT_PURPOSE: CONTEXT_PURPOSE_VALUE, CONTEXT_KEY_ID: key_id}


def _endpoint(client: KMSClient) -> str:
    return str(client.meta.endpoint_url)


def _service_failure(
    operation: str, key: KmsKey, exc: ClientError | BotoCoreError, client: KMSClient
) -> str:
    """Return the message of a failed Encrypt or Decrypt request: cause and what to do."""
    prefix = f"KMS {operation} with key {key.describe()} failed"
    if isinstance(exc, NoCredentialsError):
        return f"{prefix}: no AWS credentials found; {_CREDENTIALS_HINT}"
    if isinstance(exc, BotoCoreError):
        return (
            f"{prefix}: cannot reach KMS at {_endpoint(client)} ({exc}); check "
            "encryption.kms_endpoint_url and the network"
        )
    code, message = error_code(exc), _error_message(exc)
    if code == "ThrottlingException":
        attempts = 1 + int(exc.response.get("ResponseMetadata", {}).get("RetryAttempts", 0))
        return (
            f"{prefix}: KMS throttled the request on all {attempts} attempts; raise the "
            "account's KMS request quota, or encryption.kms_max_attempts"
        )
    if code == "AccessDeniedException":
        return (
            f"{prefix}: access denied ({message}); grant the archive's AWS identity "
            f"{_PERMISSIONS} on the key"
        )
    if code in ("DisabledException", "KMSInvalidStateException"):
        return f"{prefix}: the key is not enabled ({message}); enable it in KMS"
    if code == "NotFoundException":
        return f"{prefix}: the key no longer exists; restore the archive's key configuration"
    return f"{prefix}: {code}: {message}"
