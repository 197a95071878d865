"""Profile use cases: the caller's profile and nickname, answered from the write side so a
change shows at once, whatever the profile projection has caught up with."""

from __future__ import annotations

from application.host import Host
from application.idempotency import IdempotencyRequest
from application.principal import Principal
from application.results import Answer, Profile
from domain.account import Account
from domain.ids import account_id
from domain.nickname import normalise_nickname


class ProfileUseCases:
    def set_nickname(
        self: Host,
        principal: Principal,
        nickname: str,
        idem: IdempotencyRequest | None = None,
    ) -> Answer:
        """Change the nickname; the same nickname again appends nothing (the answer then
        has no event position)."""
        normalised = normalise_nickname(nickname)

        def decide() -> tuple[tuple[Account], int, Profile]:
            tenant_id, user_id = principal.tenant_id, principal.user_id
            account = self.load(Account, account_id(tenant_id, user_id)) or Account(
                tenant_id=tenant_id, user_id=user_id
            )
            account.change_nickname(normalised)
            plan = account.plan or self._plan_for(tenant_id, user_id)[0]
            profile = Profile(
                user_id=user_id, tenant_id=tenant_id, nickname=account.nickname, plan=plan
            )
            return (account,), 200, profile

        return self.command(decide, idem)

    def profile_of(self: Host, principal: Principal) -> Profile:
        """The write side's profile (the API reads the projection; this is for commands
        and tests that must not lag)."""
        tenant_id, user_id = principal.tenant_id, principal.user_id
        account = self.load(Account, account_id(tenant_id, user_id))
        nickname = account.nickname if account is not None else None
        plan = (account.plan if account is not None else None) or self._plan_for(
            tenant_id, user_id
        )[0]
        return Profile(user_id=user_id, tenant_id=tenant_id, nickname=nickname, plan=plan)
