"""TestFramework: given/when/then on the bank account, and what each assertion reports when
it fails (the message is what a user reads in their test run)."""

from __future__ import annotations

import re
from decimal import Decimal

import pytest

from cqrs import TestFramework
from examples.bank_account.domain import (
    AccountOpened,
    BankAccount,
    BankAccountError,
    BankAccountServices,
    CustomerDepositedMoney,
    CustomerWithdrewCash,
    DepositMoney,
    WithdrawMoney,
)


class RecordingAtm:
    def __init__(self) -> None:
        self.accounts: list[str] = []

    async def withdrawal(self, atm_id: str, account_id: str, amount: Decimal) -> bool:
        self.accounts.append(account_id)
        return True


OPENED = AccountOpened("acc")
DEPOSITED = CustomerDepositedMoney(Decimal(100), Decimal(100))


async def test_the_handler_sees_test_id_unless_told_otherwise():
    atm = RecordingAtm()
    services = BankAccountServices(atm=atm)
    withdraw = WithdrawMoney(Decimal(1), "ATM-1")
    await TestFramework(BankAccount, services).given([OPENED, DEPOSITED]).when(withdraw)
    await (
        TestFramework(BankAccount, services, aggregate_id="acc-9")
        .given([OPENED, DEPOSITED])
        .when(withdraw)
    )
    assert atm.accounts == ["test-id", "acc-9"]


async def test_state_after_a_refusal_is_the_given_state():
    result = await (
        TestFramework(BankAccount, BankAccountServices())
        .given([OPENED, DEPOSITED])
        .when(WithdrawMoney(Decimal(500), "ATM-1"))
    )
    result.then_expect_error_message("funds not available")
    result.then_expect_state(lambda account: account.balance == Decimal(100))


async def test_state_after_events_includes_them():
    result = await (
        TestFramework(BankAccount, BankAccountServices())
        .given([OPENED])
        .and_([DEPOSITED])
        .when(DepositMoney(Decimal(5)))
    )
    result.then_expect_events([CustomerDepositedMoney(Decimal(5), Decimal(105))])
    result.then_expect_state(lambda account: account.balance == Decimal(105))
    with pytest.raises(AssertionError, match=r"state check .* failed for BankAccount"):
        result.then_expect_state(lambda account: account.balance == 0)


async def deposit_result():
    return await (
        TestFramework(BankAccount, BankAccountServices())
        .given([OPENED])
        .when(DepositMoney(Decimal(5)))
    )


async def refusal_result():
    return await TestFramework(BankAccount).given_no_previous_events().when(DepositMoney(1))


async def test_matching_checks_the_number_of_events_first():
    result = await deposit_result()
    result.then_expect_events_matching([CustomerDepositedMoney])
    result.then_expect_events_matching([lambda event: event.balance == Decimal(5)])
    with pytest.raises(AssertionError) as raised:
        result.then_expect_events_matching([CustomerDepositedMoney, CustomerDepositedMoney])
    assert str(raised.value).startswith("expected 2 event(s), got 1: [CustomerDepositedMoney(")
    with pytest.raises(AssertionError, match=r"^event 0 CustomerDepositedMoney\(.*\) does not"):
        result.then_expect_events_matching([CustomerWithdrewCash])


async def test_expecting_events_after_a_refusal_reports_the_error():
    result = await refusal_result()
    with pytest.raises(AssertionError, match="expected events, but the handler raised") as raised:
        result.then_expect_events([])
    assert isinstance(raised.value.__cause__, BankAccountError)
    with pytest.raises(AssertionError, match="expected events, but the handler raised"):
        result.then_expect_events_matching([])


async def test_an_expected_error_instance_must_match_class_and_message():
    result = await refusal_result()
    result.then_expect_error(BankAccountError("account not open"))
    result.then_expect_error(BankAccountError)
    result.then_expect_error(Exception)
    with pytest.raises(AssertionError) as raised:
        result.then_expect_error(BankAccountError("funds not available"))
    assert str(raised.value) == (
        "expected error BankAccountError('funds not available'), "
        "got BankAccountError('account not open')"
    )
    with pytest.raises(AssertionError, match=re.escape("expected error ValueError('account")):
        result.then_expect_error(ValueError("account not open"))
    with pytest.raises(AssertionError, match="expected error <class 'KeyError'>"):
        result.then_expect_error(KeyError)


async def test_an_expected_message_reports_the_actual_one():
    result = await refusal_result()
    with pytest.raises(AssertionError) as raised:
        result.then_expect_error_message("something else")
    assert str(raised.value) == ("expected error message 'something else', got 'account not open'")


async def test_expecting_an_error_after_events_reports_the_events():
    result = await deposit_result()
    with pytest.raises(AssertionError, match=r"^expected an error, but the handler returned \["):
        result.then_expect_error(BankAccountError)
    with pytest.raises(AssertionError, match="expected an error"):
        result.then_expect_error_message("x")
    assert result.inspect_result() == [CustomerDepositedMoney(Decimal(5), Decimal(5))]
