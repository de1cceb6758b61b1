"""OpenID Connect single sign-on for the console: the relying party built on authlib.

The console uses the authorization code flow with PKCE (S256), ``state`` and
``nonce``. authlib keeps the state, nonce and code verifier of a login in
progress in a signed cookie (Starlette's ``SessionMiddleware``, see
:func:`install_oidc`) and checks the ID token on return: the signature
against the provider's JWKS, the issuer, the audience (the client id), the
expiry and the nonce.

The discovery document is read on the first login, not at start, so that an
identity provider outage stops console logins only and never the archive.
While the provider is unreachable, the login page shows an error message.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx2
from authlib.integrations.base_client import OAuthError
from authlib.integrations.starlette_client import OAuth, StarletteOAuth2App
from fastapi import FastAPI, Request
from joserfc.errors import JoseError
from starlette.middleware.sessions import SessionMiddleware
from starlette.responses import Response

from dicomvault.config import AuthSettings, ConfigError
from dicomvault.users import Role

LOGGER = logging.getLogger(__name__)

# The cookie that carries a login in progress. The console session cookie is another one.
FLOW_COOKIE = "dicomvault_oidc"
FLOW_COOKIE_PATH = "/console/login/oidc"
# Seconds a user may spend at the provider before the login must start again.
FLOW_MAX_AGE = 600
# Seconds for each request to the provider (discovery, JWKS, token endpoint).
PROVIDER_TIMEOUT = 10.0
_CLIENT_NAME = "dicomvault"


class OidcLoginError(Exception):
    """A single sign-on login failed; the message is safe to show to the user."""


def read_client_secret(auth: AuthSettings) -> str:
    """Return the client secret from DICOMVAULT_AUTH_OIDC_CLIENT_SECRET or the secret file.

    Raises
    ------
    ConfigError
        If the secret file cannot be read or is empty. The message never
        contains the secret.
    """
    if auth.oidc_client_secret:
        return auth.oidc_client_secret
    path = Path(auth.oidc_client_secret_file)
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(
            f"Cannot read 'auth.oidc_client_secret_file' {path}: {exc.strerror}"
        ) from None
    if not secret:
        raise ConfigError(f"'auth.oidc_client_secret_file' {path} is empty")
    return secret


class OidcLogin:
    """The archive as an OpenID Connect client of one provider, with its role mapping."""

    def __init__(self, auth: AuthSettings, client_secret: str) -> None:
        self.auth = auth
        self.issuer = auth.oidc_issuer
        self.display_name = auth.oidc_display_name
        oauth = OAuth()
        client = oauth.register(
            _CLIENT_NAME,
            client_id=auth.oidc_client_id,
            client_secret=client_secret,
            server_metadata_url=f"{self.issuer}/.well-known/openid-configuration",
            client_kwargs={
                "scope": auth.oidc_scopes,
                "code_challenge_method": "S256",
                "timeout": PROVIDER_TIMEOUT,
            },
        )
        assert isinstance(client, StarletteOAuth2App)
        self._client = client

    async def metadata(self) -> Mapping[str, Any]:
        """Return the provider's discovery document, read once and then kept.

        Raises
        ------
        OidcLoginError
            If the document cannot be read, or names another issuer than
            ``auth.oidc_issuer`` (OpenID Connect Discovery 1.0, section 4.3).
        """
        try:
            metadata: Mapping[str, Any] = await self._client.load_server_metadata()
        except (httpx2.HTTPError, ValueError) as exc:
            LOGGER.error("Cannot read the discovery document of %s: %s", self.issuer, exc)
            raise OidcLoginError(
                f"The identity provider {self.issuer} cannot be reached; try again later "
                "or ask an administrator"
            ) from exc
        if str(metadata.get("issuer", "")).rstrip("/") != self.issuer:
            LOGGER.error(
                "The discovery document of %s names the issuer %r; check auth.oidc_issuer",
                self.issuer,
                metadata.get("issuer"),
            )
            self._client.server_metadata = {}  # read again at the next login
            raise OidcLoginError(
                f"The identity provider at {self.issuer} reports another issuer; "
                "ask an administrator to check auth.oidc_issuer"
            )
        return metadata

    async def start(self, request: Request, redirect_uri: str) -> Response:
        """Return the redirect to the provider's authorization endpoint.

        Raises
        ------
        OidcLoginError
            If the provider cannot be reached.
        """
        await self.metadata()
        response: Response = await self._client.authorize_redirect(request, redirect_uri)
        return response

    async def finish(self, request: Request) -> Mapping[str, Any]:
        """Exchange the code of the callback ``request`` and return the validated ID token claims.

        Raises
        ------
        OidcLoginError
            If the provider returned an error, the state does not match
            a login started here, the code exchange failed, or the ID token
            is invalid (signature, issuer, audience, expiry or nonce).
        """
        await self.metadata()
        try:
            token = await self._client.authorize_access_token(request)
        except OAuthError as exc:
            raise OidcLoginError(f"The identity provider rejected the login: {exc.error}") from exc
        except (JoseError, ValueError) as exc:
            raise OidcLoginError(f"The ID token is invalid: {exc}") from exc
        except httpx2.HTTPError as exc:
            raise OidcLoginError(
                f"The token request to the identity provider failed: {exc}"
            ) from exc
        claims = token.get("userinfo")
        if not claims:
            raise OidcLoginError("The identity provider returned no ID token")
        return dict(claims)

    async def validate_id_token(self, id_token: str, nonce: str) -> Mapping[str, Any]:
        """Return the claims of ``id_token`` after the checks that :meth:`finish` makes.

        Raises
        ------
        OidcLoginError
            If the token is invalid for this provider and client.
        """
        await self.metadata()
        try:
            claims = await self._client.parse_id_token({"id_token": id_token}, nonce=nonce)
        except (JoseError, ValueError) as exc:
            raise OidcLoginError(f"The ID token is invalid: {exc}") from exc
        return dict(claims)

    def map_role(self, claims: Mapping[str, Any]) -> Role | None:
        """Return the role that the role claim gives, admin before user, or None for no match."""
        value = claims.get(self.auth.oidc_role_claim)
        if isinstance(value, str):
            values = {value}
        elif isinstance(value, list):
            values = {item for item in value if isinstance(item, str)}
        else:
            return None
        if values & set(self.auth.oidc_admin_values):
            return Role.ADMIN
        if values & set(self.auth.oidc_user_values):
            return Role.USER
        return None

    def user_name(self, claims: Mapping[str, Any]) -> str | None:
        """Return the value of the name claim, or None when it is missing or no string."""
        value = claims.get(self.auth.oidc_name_claim)
        return value if isinstance(value, str) and value else None

    async def end_session_url(self, post_logout_redirect_uri: str) -> str | None:
        """Return the provider's logout URL (RP-initiated logout), or None if it has none."""
        try:
            metadata = await self.metadata()
        except OidcLoginError:
            return None
        if not metadata.get("end_session_endpoint"):
            return None
        logout = await self._client.create_logout_url(
            post_logout_redirect_uri=post_logout_redirect_uri,
            client_id=self.auth.oidc_client_id,
        )
        url: str = logout["url"]
        return url


def install_oidc(app: FastAPI, auth: AuthSettings, https_only: bool) -> None:
    """Set ``app.state.oidc`` to an :class:`OidcLogin`, or to None while single sign-on is off.

    The cookie of a login in progress is signed with a key derived from the
    client secret, so every node of the archive accepts the cookies of the
    others. It is sent only to the login paths, and with SameSite=Lax,
    because the provider's redirect back is a cross-site navigation.

    Raises
    ------
    ConfigError
        If the client secret file cannot be read.
    """
    if not auth.oidc_issuer:
        app.state.oidc = None
        return
    client_secret = read_client_secret(auth)
    # authlib logs the PKCE code verifier at DEBUG; keep it out of verbose logs.
    logging.getLogger("authlib").setLevel(logging.INFO)
    app.state.oidc = OidcLogin(auth, client_secret)
    signing_key = hmac.new(
        client_secret.encode(), b"dicomvault oidc login cookie", hashlib.sha256
    ).hexdigest()
    app.add_middleware(
        SessionMiddleware,
        secret_key=signing_key,
        session_cookie=FLOW_COOKIE,
        max_age=FLOW_MAX_AGE,
        path=FLOW_COOKIE_PATH,
        same_site="lax",
        https_only=https_only,
    )
    LOGGER.info("Console single sign-on through %s", auth.oidc_issuer)


def oidc_login(request: Request) -> OidcLogin | None:
    """Return the application's OpenID Connect client, or None while single sign-on is off."""
    login: OidcLogin | None = getattr(request.app.state, "oidc", None)
    return login
