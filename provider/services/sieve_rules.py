"""The rule editor's model: rules in plain words, vacation and forwarding, to and from Sieve."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from datetime import date
from typing import Any

from sqlalchemy.orm import Session

from provider.errors import InvalidInput, ProviderError
from provider.mailstore import MailStore
from provider.mailstore.names import normalize_folder_name
from provider.models import Mailbox
from provider.services import sieve_scripts
from provider.services.audit import Actor

MARKER = "# provider-rules v1"
SCRIPT_NAME = "rules"
CONDITION_KINDS = ("from", "subject", "size_over", "to", "header")
ACTION_KINDS = ("move", "mark_read", "flag", "forward", "discard", "stop")
SIZE_UNITS = ("", "K", "M")
MAX_RULES = 100
MAX_CONDITIONS = 10
MAX_VALUE_CHARACTERS = 500
MAX_TEXT_CHARACTERS = 10_000
MAX_SIZE_NUMBER = 1_000_000
MAX_VACATION_DAYS = 365
_HEADER_NAME = re.compile(r"[!-9;-~]{1,76}")  # RFC 5322 field-name: printable ASCII but ':'
_ADDRESS = re.compile(r"[^@\s<>\"(),;:\\\[\]]{1,64}@[A-Za-z0-9.-]{1,253}")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_CONTROL_BUT_NEWLINE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029]")


class NotRepresentable(Exception):
    """The script is not one the editor wrote (or was changed by hand since)."""


@dataclass
class Condition:
    """One test: kind is from/subject/size_over/to/header; `header` names the header for
    "header", `unit` is ""/"K"/"M" for size_over."""

    kind: str
    value: str
    header: str = ""
    unit: str = ""


@dataclass
class RuleAction:
    """One action: move (folder, create), mark_read, flag, forward (address, keep_copy),
    discard, stop."""

    kind: str
    folder: str = ""
    create: bool = True
    address: str = ""
    keep_copy: bool = False


@dataclass
class Rule:
    """When all/any of the conditions hold, do the actions (skipped when not enabled)."""

    name: str
    conditions: list[Condition]
    actions: list[RuleAction]
    match: str = "all"
    enabled: bool = True


@dataclass
class Vacation:
    """The away reply; first_day/last_day (ISO dates) bound when it is written into the script."""

    enabled: bool = False
    subject: str = ""
    text: str = ""
    days: int = 7
    first_day: str = ""
    last_day: str = ""

    def in_window(self, today: date) -> bool:
        """Whether the reply is to be sent on `today` (enabled and inside the dates)."""
        if not self.enabled:
            return False
        if self.first_day and today < date.fromisoformat(self.first_day):
            return False
        return not (self.last_day and today > date.fromisoformat(self.last_day))


@dataclass
class Forwarding:
    """Forward every message to `address` (empty: off), keeping a copy or not."""

    address: str = ""
    keep_copy: bool = True


@dataclass
class RuleSet:
    """Everything the editor keeps for one mailbox."""

    rules: list[Rule] = field(default_factory=list)
    vacation: Vacation = field(default_factory=Vacation)
    forwarding: Forwarding = field(default_factory=Forwarding)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def uses_sorting(self) -> bool:
        """Whether any enabled rule moves or flags (what a POP3-only mailbox may not have)."""
        return any(
            action.kind in ("move", "mark_read", "flag")
            for rule in self.rules
            if rule.enabled
            for action in rule.actions
        )


# --- validation -------------------------------------------------------------------------------


def _text(value: Any, what: str, field_name: str, limit: int = MAX_VALUE_CHARACTERS) -> str:
    if not isinstance(value, str):
        raise InvalidInput(f"{what} must be text", field_name)
    value = value.strip()
    if _CONTROL.search(value):
        raise InvalidInput(f"{what} may not contain control characters", field_name)
    if len(value) > limit:
        raise InvalidInput(f"{what} may have at most {limit} characters", field_name)
    return value


def check_address(value: Any, field_name: str = "address") -> str:
    """An e-mail address as a forward target or an alias (lowercased domain)."""
    value = _text(value, "the address", field_name, 320)
    if not value:
        raise InvalidInput("an address is needed", field_name)
    if not _ADDRESS.fullmatch(value):
        raise InvalidInput(f"{value!r} is not an e-mail address", field_name)
    local, _, domain = value.rpartition("@")
    return f"{local}@{domain.lower()}"


def check_condition(condition: Condition) -> Condition:
    """The condition cleaned up, or InvalidInput naming the field."""
    if condition.kind not in CONDITION_KINDS:
        raise InvalidInput(f"unknown condition {condition.kind!r}", "kind")
    if condition.kind == "size_over":
        value = _text(condition.value, "the size", "value", 20)
        if not value.isascii() or not value.isdigit() or not 1 <= int(value) <= MAX_SIZE_NUMBER:
            raise InvalidInput(
                f"the size must be a whole number from 1 to {MAX_SIZE_NUMBER}", "value"
            )
        if condition.unit not in SIZE_UNITS:
            raise InvalidInput("the size unit must be bytes, K or M", "unit")
        return Condition("size_over", str(int(value)), "", condition.unit)
    if condition.kind == "to":
        return Condition("to", check_address(condition.value, "value"))
    value = _text(condition.value, "the text to look for", "value")
    if not value:
        raise InvalidInput("say what the message should contain", "value")
    header = ""
    if condition.kind == "header":
        header = _text(condition.header, "the header name", "header", 76)
        if not _HEADER_NAME.fullmatch(header):
            raise InvalidInput(
                "a header name is letters, digits and punctuation without ':' or spaces", "header"
            )
    return Condition(condition.kind, value, header)


def check_action(action: RuleAction) -> RuleAction:
    """The action cleaned up, or InvalidInput naming the field."""
    if action.kind not in ACTION_KINDS:
        raise InvalidInput(f"unknown action {action.kind!r}", "kind")
    if action.kind == "move":
        folder = _text(action.folder, "the folder", "folder", 1000)
        try:
            folder = normalize_folder_name(folder)
        except ValueError as error:
            raise InvalidInput(str(error), "folder") from None
        return RuleAction("move", folder=folder, create=bool(action.create))
    if action.kind == "forward":
        return RuleAction(
            "forward", address=check_address(action.address), keep_copy=bool(action.keep_copy)
        )
    return RuleAction(action.kind)


def check_rule(rule: Rule) -> Rule:
    """The rule cleaned up, or InvalidInput naming the field."""
    name = _text(rule.name, "the name", "name", 200)
    if rule.match not in ("all", "any"):
        raise InvalidInput("match must be all or any", "match")
    if not rule.conditions:
        raise InvalidInput("a rule needs at least one condition", "conditions")
    if len(rule.conditions) > MAX_CONDITIONS:
        raise InvalidInput(f"a rule may have at most {MAX_CONDITIONS} conditions", "conditions")
    conditions = [check_condition(condition) for condition in rule.conditions]
    actions = [check_action(action) for action in rule.actions]
    kinds = [action.kind for action in actions]
    if not actions:
        raise InvalidInput("a rule needs at least one action", "actions")
    if len(set(kinds)) != len(kinds):
        raise InvalidInput("each kind of action may appear once in a rule", "actions")
    if "discard" in kinds and ({"move", "forward", "mark_read", "flag"} & set(kinds)):
        raise InvalidInput("delete cannot be combined with move, forward or flags", "actions")
    order = {kind: index for index, kind in enumerate(ACTION_KINDS)}
    actions.sort(key=lambda action: order[action.kind])
    return Rule(name, conditions, actions, rule.match, bool(rule.enabled))


def check_vacation(vacation: Vacation) -> Vacation:
    """The vacation block cleaned up, or InvalidInput naming the field."""
    subject = _text(vacation.subject, "the subject", "subject", 250)
    if not isinstance(vacation.text, str):
        raise InvalidInput("the text must be text", "text")
    text = vacation.text.replace("\r\n", "\n").strip()
    if _CONTROL_BUT_NEWLINE.search(text):
        raise InvalidInput("the text may not contain control characters", "text")
    if len(text) > MAX_TEXT_CHARACTERS:
        raise InvalidInput(f"the text may have at most {MAX_TEXT_CHARACTERS} characters", "text")
    if vacation.enabled and not text:
        raise InvalidInput("write the reply people will get", "text")
    days = vacation.days
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_VACATION_DAYS:
        raise InvalidInput(f"days must be a whole number from 1 to {MAX_VACATION_DAYS}", "days")
    days_of: dict[str, date | None] = {}
    for name in ("first_day", "last_day"):
        value = getattr(vacation, name)
        if not isinstance(value, str):
            raise InvalidInput("a day must be a date", name)
        try:
            days_of[name] = date.fromisoformat(value) if value else None
        except ValueError:
            raise InvalidInput(f"{value[:40]!r} is not a date (YYYY-MM-DD)", name) from None
    first, last = days_of["first_day"], days_of["last_day"]
    if first and last and last < first:
        raise InvalidInput("the last day is before the first day", "last_day")
    return Vacation(
        bool(vacation.enabled),
        subject,
        text,
        days,
        first.isoformat() if first else "",
        last.isoformat() if last else "",
    )


def check_forwarding(forwarding: Forwarding) -> Forwarding:
    """The forwarding block cleaned up (an empty address switches it off)."""
    if not (isinstance(forwarding.address, str) and forwarding.address.strip()):
        return Forwarding("", bool(forwarding.keep_copy))
    return Forwarding(check_address(forwarding.address), bool(forwarding.keep_copy))


def check_ruleset(ruleset: RuleSet) -> RuleSet:
    """Every part checked; InvalidInput on the first problem."""
    if len(ruleset.rules) > MAX_RULES:
        raise InvalidInput(f"at most {MAX_RULES} rules are allowed", "rules")
    return RuleSet(
        [check_rule(rule) for rule in ruleset.rules],
        check_vacation(ruleset.vacation),
        check_forwarding(ruleset.forwarding),
    )


def from_dict(data: Any) -> RuleSet:
    """A RuleSet from its JSON form (as to_dict writes it); InvalidInput when malformed."""
    try:
        rules = [
            Rule(
                name=item["name"],
                conditions=[Condition(**c) for c in item["conditions"]],
                actions=[RuleAction(**a) for a in item["actions"]],
                match=item["match"],
                enabled=item["enabled"],
            )
            for item in data["rules"]
        ]
        ruleset = RuleSet(rules, Vacation(**data["vacation"]), Forwarding(**data["forwarding"]))
    except (KeyError, TypeError, AttributeError) as error:
        raise InvalidInput(f"the rules are malformed: {error}") from None
    return check_ruleset(ruleset)


# --- Sieve ------------------------------------------------------------------------------------


def quote(value: str) -> str:
    """A Sieve quoted string (RFC 5228 §2.4.2): only '\\' and '"' are escaped."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _test(condition: Condition) -> str:
    if condition.kind == "from":
        return f'header :contains "from" {quote(condition.value)}'
    if condition.kind == "subject":
        return f'header :contains "subject" {quote(condition.value)}'
    if condition.kind == "header":
        return f"header :contains {quote(condition.header)} {quote(condition.value)}"
    if condition.kind == "to":
        return f'address :is ["to", "cc"] {quote(condition.value)}'
    return f"size :over {condition.value}{condition.unit}"


def _commands(rule: Rule) -> list[str]:
    lines: list[str] = []
    flags = [
        {"mark_read": "\\\\Seen", "flag": "\\\\Flagged"}[action.kind]
        for action in rule.actions
        if action.kind in ("mark_read", "flag")
    ]
    if flags:
        lines.append("addflag [" + ", ".join(f'"{flag}"' for flag in flags) + "];")
    for action in rule.actions:
        if action.kind == "move":
            create = ":create " if action.create else ""
            lines.append(f"fileinto {create}{quote(action.folder)};")
        elif action.kind == "forward":
            copy = ":copy " if action.keep_copy else ""
            lines.append(f"redirect {copy}{quote(action.address)};")
        elif action.kind == "discard":
            lines.append("discard;")
        elif action.kind == "stop":
            lines.append("stop;")
    return lines


def _render(ruleset: RuleSet, with_vacation: bool) -> str:
    payload = json.dumps(ruleset.to_dict(), ensure_ascii=True, separators=(",", ":"))
    body: list[str] = []
    needs: set[str] = set()
    vacation = ruleset.vacation
    if with_vacation:
        needs.add("vacation")
        subject = f":subject {quote(vacation.subject)} " if vacation.subject else ""
        body += ["# vacation", f"vacation :days {vacation.days} {subject}{quote(vacation.text)};"]
    forwarding = ruleset.forwarding
    if forwarding.address:
        body.append("# forwarding")
        if forwarding.keep_copy:
            needs.add("copy")
            body.append(f"redirect :copy {quote(forwarding.address)};")
        else:
            body += [f"redirect {quote(forwarding.address)};", "stop;"]
    for number, rule in enumerate(ruleset.rules, 1):
        if not rule.enabled:
            continue
        tests = [_test(condition) for condition in rule.conditions]
        test = (
            tests[0]
            if len(tests) == 1
            else (("allof" if rule.match == "all" else "anyof") + " (" + ", ".join(tests) + ")")
        )
        for action in rule.actions:
            if action.kind == "move":
                needs.add("fileinto")
                if action.create:
                    needs.add("mailbox")
            elif action.kind in ("mark_read", "flag"):
                needs.add("imap4flags")
            elif action.kind == "forward" and action.keep_copy:
                needs.add("copy")
        body.append(f"# rule {number}")
        body.append(f"if {test} {{")
        body += [f"    {line}" for line in _commands(rule)]
        body.append("}")
    order = ("copy", "fileinto", "imap4flags", "mailbox", "vacation")
    head = [MARKER, f"# {payload}"]
    if needs:
        head.append("require [" + ", ".join(quote(name) for name in order if name in needs) + "];")
    return "\n".join(head + body) + "\n"


def to_sieve(ruleset: RuleSet, today: date) -> str:
    """The Sieve script for the rules; the vacation is in it only on days inside its window."""
    ruleset = check_ruleset(ruleset)
    return _render(ruleset, ruleset.vacation.in_window(today))


def from_sieve(text: str) -> RuleSet:
    """The rules the editor wrote into `text`; NotRepresentable when the script is not exactly
    what to_sieve writes for them (with or without the vacation, which depends on the day)."""
    lines = text.split("\n", 2)
    if len(lines) < 2 or lines[0] != MARKER or not lines[1].startswith("# "):
        raise NotRepresentable("the script was not written by the rule editor")
    try:
        ruleset = from_dict(json.loads(lines[1][2:]))
    except (ValueError, InvalidInput) as error:
        raise NotRepresentable(f"the editor's data in the script is damaged: {error}") from None
    if text not in (_render(ruleset, True), _render(ruleset, False)):
        raise NotRepresentable("the script was changed by hand after the rule editor wrote it")
    return ruleset


# --- the mailbox's editor state ---------------------------------------------------------------


@dataclass
class EditorState:
    """What the editor shows: the rules when it can edit them, else the script read-only."""

    name: str  # the script the editor writes (the active one, or "rules")
    source: str  # the active script's text ("" when there is none)
    ruleset: RuleSet | None  # None: not representable (read-only)
    reason: str = ""  # why not representable

    @property
    def editable(self) -> bool:
        return self.ruleset is not None


def load(store: MailStore, mailbox: Mailbox) -> EditorState:
    """The active script as the editor sees it."""
    home = sieve_scripts.home_of(store, mailbox.address)
    active = sieve_scripts.active_name(home)
    if active is None:
        return EditorState(SCRIPT_NAME, "", RuleSet())
    try:
        raw = sieve_scripts.get_script(store, mailbox, active)
    except ProviderError:
        return EditorState(active, "", None, "the active script cannot be read")
    source = raw.decode("utf-8", "replace")
    try:
        return EditorState(active, source, from_sieve(source))
    except NotRepresentable as error:
        return EditorState(active, source, None, str(error))


def save(
    session: Session,
    store: MailStore,
    mailbox: Mailbox,
    ruleset: RuleSet,
    *,
    actor: Actor,
    today: date,
) -> EditorState:
    """Write the rules as the active script (refused when the active script is hand-edited);
    the POP3-only and size rules are sieve_scripts'."""
    state = load(store, mailbox)
    if not state.editable:
        raise InvalidInput(
            "your active rules were written by hand (Sieve) and the editor cannot show them; "
            "change them in the Sieve editor"
        )
    if not mailbox.imap_enabled and ruleset.uses_sorting():
        raise InvalidInput(sieve_scripts.POP3_ONLY_REASON, "rules")
    source = to_sieve(ruleset, today)
    sieve_scripts.put_script(
        session, store, mailbox, state.name, source.encode(), activate=True, actor=actor
    )
    return EditorState(state.name, source, check_ruleset(ruleset))


def refresh_window(
    session: Session, store: MailStore, mailbox: Mailbox, *, actor: Actor, today: date
) -> bool:
    """Rewrite the editor's script when today moved the vacation into or out of its window
    (run daily); True when it was rewritten. Hand-edited scripts are never touched."""
    state = load(store, mailbox)
    if state.ruleset is None or not state.source:  # hand-edited, or no active script at all
        return False
    wanted = to_sieve(state.ruleset, today)
    if wanted == state.source:
        return False
    # Written only if nobody (a Sieve client, the owner) changed the script since it was read.
    sieve_scripts.put_script(
        session,
        store,
        mailbox,
        state.name,
        wanted.encode(),
        actor=actor,  # not activate: it is the active one, unless someone changed that meanwhile
        only_if=state.source.encode(),
    )
    return True
