"""Every rule of the sample bank account, given/when/then with TestFramework."""

from __future__ import annotations

import decimal
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cqrs import (
    CqrsFramework,
    DomainError,
    PersistedEventStore,
    TestFramework,
    UnexpectedError,
    UserError,
)
from cqrs_memory import MemoryEventRepository
from examples.bank_account.domain import (
    MAX_AMOUNT,
    MAX_BALANCE,
    AccountOpened,
    BankAccount,
    BankAccountCommand,
    BankAccountError,
    BankAccountServices,
    BankAccountView,
    CustomerDepositedMoney,
    CustomerWithdrewCash,
    CustomerWroteCheck,
    DepositMoney,
    OpenAccount,
    WithdrawMoney,
    WriteCheck,
)

D = Decimal
OPENED = AccountOpened("A1")
FUNDED = CustomerDepositedMoney(D(200), D(200))


async def memory() -> MemoryEventRepository:
    """An open in-memory repository (every repository must be open to be used)."""
    repository = MemoryEventRepository()
    await repository.open()
    return repository


@pytest.fixture
def account() -> TestFramework[BankAccount]:
    return TestFramework(BankAccount, BankAccountServices(), aggregate_id="A1")


async def test_open_account(account):
    result = await account.given_no_previous_events().when(OpenAccount("A1"))
    result.then_expect_events([OPENED])
    result.then_expect_state(lambda state: state.opened and state.balance == 0)


async def test_account_opens_once(account):
    result = await account.given([OPENED]).when(OpenAccount("A1"))
    result.then_expect_error(BankAccountError)
    result.then_expect_error_message("account already open")


async def test_no_command_on_an_unopened_account(account):
    result = await account.given_no_previous_events().when(DepositMoney(D(1)))
    result.then_expect_error_message("account not open")


async def test_deposit(account):
    result = await account.given([OPENED]).and_([FUNDED]).when(DepositMoney(D("0.01")))
    result.then_expect_events([CustomerDepositedMoney(D("0.01"), D("200.01"))])
    result.then_expect_state(lambda state: state.balance == D("200.01"))


@pytest.mark.parametrize("amount", [D(0), D(-5), D("NaN"), D("Infinity")])
async def test_amounts_must_be_positive(account, amount):
    result = await account.given([OPENED]).when(DepositMoney(amount))
    result.then_expect_error(BankAccountError)
    assert "positive" in str(result.inspect_result())


@pytest.mark.parametrize(
    "amount",
    ["0.001", "1.505", "1e-30", "1e999999999", "-1e999999999", "1000000000.01", "sNaN"],
)
async def test_amounts_are_cents_up_to_the_maximum(account, amount):
    result = await account.given([OPENED, FUNDED]).when(DepositMoney(D(amount)))
    result.then_expect_error(BankAccountError)
    assert "at most 2 decimal places, up to 1000000000" in str(result.inspect_result())


@pytest.mark.parametrize("amount", ["0.01", "1.5", "1.500", "1E+3", str(MAX_AMOUNT)])
async def test_amounts_within_the_rules_are_taken_as_given(account, amount):
    result = await account.given([OPENED]).when(DepositMoney(D(amount)))
    result.then_expect_events([CustomerDepositedMoney(D(amount), D(amount))])


async def test_arithmetic_is_exact_whatever_the_ambient_decimal_context(account):
    # With the default 28 digits, 0.5 onto 10**27 used to leave the balance unchanged.
    near_max = CustomerDepositedMoney(MAX_BALANCE - D("0.5"), MAX_BALANCE - D("0.5"))
    with decimal.localcontext(decimal.Context(prec=3)):
        result = await account.given([OPENED, near_max]).when(DepositMoney(D("0.5")))
        result.then_expect_events([CustomerDepositedMoney(D("0.5"), MAX_BALANCE)])
        spent = await account.given([OPENED, near_max]).when(WriteCheck("7", D("0.01")))
        spent.then_expect_events([CustomerWroteCheck("7", D("0.01"), D("999999999999.49"))])


async def test_the_balance_never_exceeds_the_maximum(account):
    full = CustomerDepositedMoney(MAX_BALANCE, MAX_BALANCE)
    result = await account.given([OPENED, full]).when(DepositMoney(D("0.01")))
    result.then_expect_error_message("the balance would exceed the maximum of 1000000000000")


commands = st.lists(
    st.tuples(
        st.sampled_from(["deposit", "withdraw", "check"]),
        st.decimals(min_value=D("0.01"), max_value=MAX_AMOUNT, places=2),
    ),
    max_size=30,
)


@settings(max_examples=50, deadline=None)
@given(commands)
async def test_the_balance_is_always_the_sum_of_the_ledger(steps):
    store = PersistedEventStore(await memory(), BankAccount, snapshot_every=4)
    cqrs = CqrsFramework(store, (), BankAccountServices())
    await cqrs.execute("A1", OpenAccount("A1"))
    with decimal.localcontext(decimal.Context(prec=5)):  # the ambient context plays no part
        for kind, amount in steps:
            command: BankAccountCommand
            if kind == "deposit":
                command = DepositMoney(amount)
            elif kind == "withdraw":
                command = WithdrawMoney(amount, "ATM-1")
            else:
                command = WriteCheck("1", amount)
            try:
                await cqrs.execute("A1", command)
            except UserError:
                continue
    view = BankAccountView()
    for envelope in await store.load_events("A1"):
        view.update(envelope)
    state = (await store.load_aggregate("A1")).aggregate
    assert view.balance == sum((entry.amount for entry in view.ledger), D(0)) == state.balance
    assert 0 <= state.balance <= MAX_BALANCE


async def test_withdraw(account):
    result = await account.given([OPENED, FUNDED]).when(WithdrawMoney(D(50), "ATM-1"))
    result.then_expect_events_matching(
        [lambda e: e == CustomerWithdrewCash(D(50), D(150), "ATM-1")]
    )


async def test_no_overdraft_on_withdrawal(account):
    result = await account.given([OPENED, FUNDED]).when(WithdrawMoney(D("200.01"), "ATM-1"))
    result.then_expect_error(BankAccountError("funds not available"))


async def test_atm_service_can_refuse(account):
    result = await account.given([OPENED, FUNDED]).when(WithdrawMoney(D(1), "BANK-9"))
    result.then_expect_error_message("ATM 'BANK-9' rejected the transaction")


async def test_write_check(account):
    result = await account.given([OPENED, FUNDED]).when(WriteCheck("1170", D("56.28")))
    result.then_expect_events_matching([CustomerWroteCheck])
    result.then_expect_events([CustomerWroteCheck("1170", D("56.28"), D("143.72"))])


async def test_no_overdraft_on_check(account):
    result = await account.given([OPENED]).when(WriteCheck("1170", D(1)))
    result.then_expect_error_message("funds not available")


async def test_check_number_is_validated_by_the_service(account):
    result = await account.given([OPENED, FUNDED]).when(WriteCheck("12a", D(1)))
    result.then_expect_error_message("check '12a' is invalid")


async def test_validator_assertions_fail_loudly(account):
    result = await account.given([OPENED]).when(DepositMoney(D(1)))
    with pytest.raises(AssertionError, match="expected an error"):
        result.then_expect_error(BankAccountError)
    with pytest.raises(AssertionError, match="expected events"):
        result.then_expect_events([])
    with pytest.raises(AssertionError, match="does not match"):
        result.then_expect_events_matching([AccountOpened])
    with pytest.raises(AssertionError, match="state check"):
        result.then_expect_state(lambda state: state.balance == 0)
    refused = await account.given_no_previous_events().when(DepositMoney(D(1)))
    with pytest.raises(AssertionError, match="expected events"):
        refused.then_expect_events([])
    with pytest.raises(AssertionError, match="expected error message"):
        refused.then_expect_error_message("nope")


def test_refusals_are_domain_errors():
    assert issubclass(BankAccountError, DomainError)
    assert BankAccount.user_errors == (DomainError,)  # the default: nothing else is a refusal


async def test_a_failing_service_is_a_bug_not_a_refusal():
    class BrokenAtm:
        async def withdrawal(self, atm_id, account_id, amount):
            raise RuntimeError("ATM driver bug")

    account = TestFramework(BankAccount, BankAccountServices(atm=BrokenAtm()), aggregate_id="A1")
    with pytest.raises(RuntimeError, match="ATM driver bug"):
        await account.given([OPENED, FUNDED]).when(WithdrawMoney(D(1), "ATM-1"))
    store = PersistedEventStore(await memory(), BankAccount)
    cqrs = CqrsFramework(store, (), BankAccountServices(atm=BrokenAtm()))
    await cqrs.execute("A1", OpenAccount("A1"))
    await cqrs.execute("A1", DepositMoney(D(5)))
    with pytest.raises(UnexpectedError, match="ATM driver bug") as caught:
        await cqrs.execute("A1", WithdrawMoney(D(1), "ATM-1"))
    assert isinstance(caught.value.__cause__, RuntimeError)
    with pytest.raises(UserError, match="funds not available"):
        await cqrs.execute("A1", WriteCheck("1", D(6)))


def test_the_projections_sum_money_exactly_whatever_the_ambient_context():
    from datetime import UTC, datetime  # noqa: PLC0415
    from uuid import uuid4  # noqa: PLC0415

    from cqrs import EventEnvelope  # noqa: PLC0415
    from examples.bank_account.projections import (  # noqa: PLC0415
        AtmActivity,
        DailyTotals,
        update_atm,
        update_daily,
    )

    amounts = [MAX_AMOUNT, D("0.01"), D("0.01")]
    atm, day = AtmActivity(), DailyTotals()
    with decimal.localcontext(decimal.Context(prec=3)):
        for sequence, amount in enumerate(amounts, 1):
            event = CustomerWithdrewCash(amount, D(0), "ATM-1")
            envelope = EventEnvelope(
                "BankAccount", "A1", sequence, event, {}, datetime.now(UTC), uuid4(), sequence
            )
            update_atm(atm, envelope)
            update_daily(day, envelope)
    assert atm.total == day.withdrawals == D("1000000000.02")
