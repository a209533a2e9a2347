"""The server session record and its state machine (DESIGN.md §4)."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from sentinel.errors import SentinelError

_SESSION_ID = re.compile(r"[0-9a-f]{16}")

# Fixed width, always UTC, always microseconds: lexical order of the strings is time order, which is
# what the stores' "newest first" indexes (DynamoDB GSI sort keys, SQLite ORDER BY) rely on.
_TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


class InvalidSessionId(SentinelError):
    """A session id that is not 16 lowercase hex characters."""


class SessionStatus(StrEnum):
    ACTIVE = "active"
    REVOKED = "revoked"
    EXPIRED = "expired"

    @property
    def is_terminal(self) -> bool:
        return self is not SessionStatus.ACTIVE

    def can_become(self, new: SessionStatus) -> bool:
        """Legal transitions: active -> revoked and active -> expired; terminal states never change."""
        return self is SessionStatus.ACTIVE and new.is_terminal


def new_session_id() -> str:
    """16 lowercase hex characters (64 bits) from the OS CSPRNG."""
    import secrets  # here: it loads hmac and hashlib, which `exec --attach` never needs (issue 14)

    return secrets.token_hex(8)


def validate_session_id(value: str) -> str:
    """Return `value` if it is a well-formed session id, else raise `InvalidSessionId`."""
    if not isinstance(value, str) or _SESSION_ID.fullmatch(value) is None:
        shown = value[:32] if isinstance(value, str) else type(value).__name__
        raise InvalidSessionId(f"invalid session id {shown!r}: expected 16 lowercase hex characters")
    return value


def utc_now() -> datetime:
    return datetime.now(UTC)


def format_timestamp(value: datetime) -> str:
    """RFC 3339, UTC, fixed width (sorts correctly as a string)."""
    if value.tzinfo is None:
        raise ValueError("timestamps must be timezone-aware")
    return value.astimezone(UTC).strftime(_TIMESTAMP_FORMAT)


def parse_timestamp(value: str) -> datetime:
    """Inverse of `format_timestamp`; also accepts other RFC 3339 forms with an offset."""
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is None:
        raise ValueError(f"timestamp without a time zone: {value!r}")
    return parsed.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class Retention:
    """How long records live: a session expires `idle_lifetime` after its last access, and the
    store may delete it (DynamoDB TTL, SQLite purge) `retention` after that.

    `lease` is how long a live server's record stays "live" without news from it (issue 10): its
    touches push `lease_until` forward for free and an idle server renews it about once a minute,
    so a record whose lease has lapsed belongs to a server that is gone (SIGKILL, power loss). A
    few minutes, not seconds: every renewal is a billed write on DynamoDB."""

    idle_lifetime: timedelta = timedelta(hours=12)
    retention: timedelta = timedelta(days=30)
    lease: timedelta = timedelta(minutes=3)

    def __post_init__(self) -> None:
        if self.lease <= timedelta(0):
            raise ValueError("the lease must be positive")

    def lease_until(self, now: datetime) -> datetime:
        return now + self.lease

    def is_stale(self, session: ServerSession, now: datetime) -> bool:
        """An active session whose lease has lapsed by `now`. A record written before leases
        existed (no `lease_until`) counts as stale once `updated_at + lease` has passed."""
        if session.status is not SessionStatus.ACTIVE:
            return False
        until = session.lease_until or session.updated_at + self.lease
        return until < now

    def expires_at(self, last_access_at: datetime) -> datetime:
        return last_access_at + self.idle_lifetime

    def ttl(self, last_access_at: datetime) -> int:
        """Epoch seconds after which the record may be deleted."""
        return int((self.expires_at(last_access_at) + self.retention).timestamp())


DEFAULT_RETENTION = Retention()


@dataclass(frozen=True, slots=True)
class ServerSession:
    """One serving instance of Sentinel, as recorded in a session store."""

    id: str
    user: str
    profile: str
    server_instance_id: str
    status: SessionStatus
    started_at: datetime
    last_access_at: datetime
    expires_at: datetime
    request_count: int
    source_identity: str
    created_at: datetime
    updated_at: datetime
    ttl: int
    revoked_by: str | None = None
    revoked_reason: str | None = None
    # Issue 10: until when the serving process vouches for the record (None: written before leases).
    lease_until: datetime | None = None
    # Issue 12: the sequence number of the last touch batch applied; a replay (<=) does not apply.
    flush_seq: int = 0
    # Issue 13: the role this session's credentials come from, and the longest lifetime (seconds)
    # any of them can have, so an admin knows how long a revoked session's credentials may live.
    role_arn: str | None = None
    credential_lifetime: int | None = None

    @classmethod
    def start(
        cls,
        *,
        user: str,
        profile: str,
        server_instance_id: str,
        source_identity: str,
        session_id: str | None = None,
        now: datetime | None = None,
        retention: Retention = DEFAULT_RETENTION,
        role_arn: str | None = None,
        credential_lifetime: int | None = None,
    ) -> ServerSession:
        """A fresh active session, as created at server startup."""
        now = now or utc_now()
        return cls(
            id=validate_session_id(session_id) if session_id else new_session_id(),
            user=user,
            profile=profile,
            server_instance_id=server_instance_id,
            status=SessionStatus.ACTIVE,
            started_at=now,
            last_access_at=now,
            expires_at=retention.expires_at(now),
            request_count=0,
            source_identity=source_identity,
            created_at=now,
            updated_at=now,
            ttl=retention.ttl(now),
            lease_until=retention.lease_until(now),
            role_arn=role_arn,
            credential_lifetime=credential_lifetime,
        )

    def with_changes(self, **changes: object) -> ServerSession:
        return replace(self, **changes)  # type: ignore[arg-type]

    def to_record(self) -> dict[str, str | int]:
        """Flat, JSON- and DynamoDB-friendly representation (timestamps as RFC 3339 strings).

        Absent optional fields are left out rather than stored as null."""
        record: dict[str, str | int] = {
            "id": self.id,
            "user": self.user,
            "profile": self.profile,
            "server_instance_id": self.server_instance_id,
            "status": self.status.value,
            "started_at": format_timestamp(self.started_at),
            "last_access_at": format_timestamp(self.last_access_at),
            "expires_at": format_timestamp(self.expires_at),
            "request_count": self.request_count,
            "source_identity": self.source_identity,
            "created_at": format_timestamp(self.created_at),
            "updated_at": format_timestamp(self.updated_at),
            "ttl": self.ttl,
            "flush_seq": self.flush_seq,
        }
        if self.revoked_by is not None:
            record["revoked_by"] = self.revoked_by
        if self.revoked_reason is not None:
            record["revoked_reason"] = self.revoked_reason
        if self.lease_until is not None:
            record["lease_until"] = format_timestamp(self.lease_until)
        if self.role_arn is not None:
            record["role_arn"] = self.role_arn
        if self.credential_lifetime is not None:
            record["credential_lifetime"] = self.credential_lifetime
        return record

    @classmethod
    def from_record(cls, record: dict[str, object]) -> ServerSession:
        """Inverse of `to_record`; raises `ValueError` (or `KeyError`) on a malformed record."""

        def text(name: str) -> str:
            value = record[name]
            if not isinstance(value, str):
                raise ValueError(f"field {name!r} is not a string")
            return value

        def optional(name: str) -> str | None:
            value = record.get(name)
            return None if value is None else str(value)

        def optional_int(name: str) -> int | None:
            value = record.get(name)
            return None if value is None else int(value)  # type: ignore[call-overload]

        lease_until = optional("lease_until")

        return cls(
            id=text("id"),
            user=text("user"),
            profile=text("profile"),
            server_instance_id=text("server_instance_id"),
            status=SessionStatus(text("status")),
            started_at=parse_timestamp(text("started_at")),
            last_access_at=parse_timestamp(text("last_access_at")),
            expires_at=parse_timestamp(text("expires_at")),
            request_count=int(record["request_count"]),  # type: ignore[call-overload]
            source_identity=text("source_identity"),
            created_at=parse_timestamp(text("created_at")),
            updated_at=parse_timestamp(text("updated_at")),
            ttl=int(record["ttl"]),  # type: ignore[call-overload]
            revoked_by=optional("revoked_by"),
            revoked_reason=optional("revoked_reason"),
            # Records written before issue 10/12/13 lack these: no lease, no batch applied yet.
            lease_until=None if lease_until is None else parse_timestamp(lease_until),
            flush_seq=optional_int("flush_seq") or 0,
            role_arn=optional("role_arn"),
            credential_lifetime=optional_int("credential_lifetime"),
        )
