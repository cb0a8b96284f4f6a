"""Keys of the local paper exchange (env `KEEL_EXCHANGE_<FIELD>`)."""

from __future__ import annotations

from decimal import Decimal

from libs.config import Section

SECTION_PREFIX = "KEEL_EXCHANGE_"


class ExchangeConfig(Section, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Credentials the exchange accepts and the one paper account it runs."""

    api_key_id: str = "keel-local-key"
    api_secret_key: str = "keel-local-secret"
    account_id: str = "keel-paper-0001"
    account_number: str = "PA0KEEL0001"
    initial_cash: Decimal = Decimal(100000)

    def __post_init__(self) -> None:
        # msgspec has no bounds for Decimal: check here so a bad value fails at start
        if not self.initial_cash.is_finite() or self.initial_cash < 0:
            raise ValueError(f"expected initial_cash >= 0, was {self.initial_cash}")
        if not self.api_key_id or not self.api_secret_key:
            raise ValueError("expected non-empty api_key_id and api_secret_key, was empty")
        if not self.account_id:
            raise ValueError("expected a non-empty account_id, was empty")
