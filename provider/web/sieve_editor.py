"""The Sieve rule editor's views, registered on /account (the owner) and /admin (a mailbox page)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_wtf import FlaskForm
from werkzeug.wrappers import Response
from wtforms import BooleanField, HiddenField, IntegerField, SelectField, StringField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import Optional

from provider.errors import InvalidInput, ProviderError
from provider.extensions import db
from provider.models import Mailbox
from provider.services import clock, identities, sieve_rules, sieve_scripts
from provider.services.audit import Actor
from provider.services.sieve_rules import (
    MAX_CONDITIONS,
    Condition,
    EditorState,
    Forwarding,
    Rule,
    RuleAction,
    RuleSet,
    Vacation,
)
from provider.services.storage import mail_store

# As many rows as a rule may have conditions: a rule is never cut short by the form.
CONDITION_ROWS = MAX_CONDITIONS
CONDITION_ROWS_SHOWN = 3  # the rest behind "More conditions" unless they hold something
CONDITION_CHOICES = [
    SelectChoice("", "—"),
    SelectChoice("from", "From contains"),
    SelectChoice("subject", "Subject contains"),
    SelectChoice("size_over", "the message is bigger than"),
    SelectChoice("to", "it was sent to my address"),
    SelectChoice("header", "the header … contains"),
]
UNIT_CHOICES = [SelectChoice("K", "KB"), SelectChoice("M", "MB"), SelectChoice("", "bytes")]
STALE = "the rules were changed meanwhile (in another window or by a Sieve client); reload"


class VersionedForm(FlaskForm):
    """Every editor form carries the version of the script it was made from."""

    version = HiddenField()


class RuleForm(VersionedForm):
    """One rule in plain words: up to MAX_CONDITIONS conditions, then what to do."""

    name = StringField("Name of the rule")
    match = SelectField(
        "Apply when",
        choices=[SelectChoice("all", "all conditions hold"), SelectChoice("any", "any holds")],
    )
    enabled = BooleanField("Rule is on", default=True)
    move = BooleanField("Move it to folder")
    folder = StringField("Folder")
    create = BooleanField("Create the folder if it does not exist", default=True)
    mark_read = BooleanField("Mark it read")
    flag = BooleanField("Flag it")
    forward = BooleanField("Forward it to")
    forward_address = StringField("Forward address")
    forward_keep_copy = BooleanField("Keep a copy here", default=True)
    discard = BooleanField("Delete it")
    stop = BooleanField("Stop: no later rule applies")


for _row in range(CONDITION_ROWS):
    setattr(
        RuleForm,
        f"c{_row}_kind",
        SelectField("Condition", choices=CONDITION_CHOICES, validate_choice=False),
    )
    setattr(RuleForm, f"c{_row}_header", StringField("Header name"))
    setattr(RuleForm, f"c{_row}_value", StringField("Value"))
    # For "sent to my address": the choices are the mailbox's own addresses (set per request).
    setattr(
        RuleForm,
        f"c{_row}_address",
        SelectField("My address", choices=[], validate_choice=False),
    )
    setattr(
        RuleForm, f"c{_row}_unit", SelectField("Unit", choices=UNIT_CHOICES, validate_choice=False)
    )


class VacationForm(VersionedForm):
    """The away reply."""

    enabled = BooleanField("Send an away reply")
    first_day = StringField("First day (YYYY-MM-DD, empty: from now)")
    last_day = StringField("Last day (YYYY-MM-DD, empty: until switched off)")
    subject = StringField("Subject")
    text = TextAreaField("Text")
    days = IntegerField("Days between two replies to one sender", validators=[Optional()])


class ForwardingForm(VersionedForm):
    """Forward everything."""

    address = StringField("Forward every message to (empty: off)")
    keep_copy = BooleanField("Keep a copy here", default=True)


class SieveForm(VersionedForm):
    """The raw Sieve editor."""

    source = TextAreaField("Sieve script")


class ActionForm(VersionedForm):
    """The small buttons (delete, up, down, on/off)."""


@dataclass(frozen=True)
class EditorSite:
    """Where the editor lives: its blueprint, how a request finds the mailbox and the actor."""

    bp: Blueprint
    prefix: str  # endpoint prefix, e.g. "rules"
    mailbox_of: Callable[..., Mailbox]
    actor_of: Callable[[Mailbox], Actor]
    layout: str
    active_page: str

    def url(self, view: str, ids: dict[str, Any], **extra: Any) -> str:
        return url_for(f"{self.bp.name}.{self.prefix}_{view}", **ids, **extra)


def version_of(state: EditorState) -> str:
    return hashlib.sha256(state.source.encode()).hexdigest()[:16]


def _fresh(form: VersionedForm, state: EditorState) -> bool:
    if form.version.data != version_of(state):
        form.form_errors.append(STALE)
        return False
    return True


def _rule_form_data(rule: Rule) -> dict[str, Any]:
    data: dict[str, Any] = {"name": rule.name, "match": rule.match, "enabled": rule.enabled}
    for index, condition in enumerate(rule.conditions[:CONDITION_ROWS]):
        data[f"c{index}_kind"] = condition.kind
        data[f"c{index}_header"] = condition.header
        if condition.kind == "to":
            data[f"c{index}_address"] = condition.value
        else:
            data[f"c{index}_value"] = condition.value
        data[f"c{index}_unit"] = condition.unit
    for action in rule.actions:
        data[action.kind if action.kind != "forward" else "forward"] = True
        if action.kind == "move":
            data["folder"], data["create"] = action.folder, action.create
        if action.kind == "forward":
            data["forward_address"], data["forward_keep_copy"] = action.address, action.keep_copy
    data.setdefault("create", True)
    data.setdefault("forward_keep_copy", True)
    return data


def _rows_to_show(form: RuleForm) -> int:
    """Condition rows shown open: the first few, or every filled one and one empty after it."""
    filled = [i for i in range(CONDITION_ROWS) if getattr(form, f"c{i}_kind").data]
    return min(CONDITION_ROWS, max(CONDITION_ROWS_SHOWN, (filled[-1] + 2) if filled else 0))


def _set_address_choices(form: RuleForm, own: list[str]) -> None:
    """Offer the mailbox's addresses in every row's select; a value a rule still holds that is
    no longer one of them is shown (marked) so it is not silently replaced, and refused on save."""
    for index in range(CONDITION_ROWS):
        select = getattr(form, f"c{index}_address")
        choices = [SelectChoice("", "— choose —")] + [SelectChoice(a, a) for a in own]
        current = select.data or ""
        if current and current.lower() not in {a.lower() for a in own}:
            choices.append(SelectChoice(current, f"{current} (no longer an address of yours)"))
        select.choices = choices


def _own_address(value: str, own: list[str]) -> str:
    """`value` if it is one of the mailbox's addresses (as listed), else InvalidInput."""
    if not value:
        raise InvalidInput("choose one of the mailbox's addresses", "address")
    for address in own:
        if address.lower() == value.strip().lower():
            return address
    raise InvalidInput(
        f"{value[:100]!r} is not an address of this mailbox; choose one from the list", "address"
    )


def _rule_from_form(form: RuleForm, own: list[str]) -> Rule | None:
    """The rule the form describes, or None with the errors placed next to their fields;
    `own` are the mailbox's addresses (the only ones "sent to my address" accepts)."""
    conditions: list[Condition] = []
    ok = True
    for index in range(CONDITION_ROWS):
        kind = getattr(form, f"c{index}_kind").data or ""
        if not kind:
            continue
        value = getattr(form, f"c{index}_value").data or ""
        try:
            if kind == "to":
                value = _own_address(getattr(form, f"c{index}_address").data or "", own)
            condition = Condition(
                kind,
                value,
                getattr(form, f"c{index}_header").data or "",
                getattr(form, f"c{index}_unit").data or "",
            )
            conditions.append(sieve_rules.check_condition(condition))
        except InvalidInput as error:
            target = getattr(form, f"c{index}_{error.field}", None)
            if target is None or (kind == "to" and error.field == "value"):
                target = getattr(form, f"c{index}_address" if kind == "to" else f"c{index}_value")
            target.errors = [*target.errors, error.message]
            ok = False
    actions: list[RuleAction] = []
    if form.move.data:
        actions.append(
            RuleAction("move", folder=form.folder.data or "", create=bool(form.create.data))
        )
    for kind in ("mark_read", "flag", "discard", "stop"):
        if getattr(form, kind).data:
            actions.append(RuleAction(kind))
    if form.forward.data:
        actions.append(
            RuleAction(
                "forward",
                address=form.forward_address.data or "",
                keep_copy=bool(form.forward_keep_copy.data),
            )
        )
    for action in actions:
        try:
            sieve_rules.check_action(action)
        except InvalidInput as error:
            target = form.folder if action.kind == "move" else form.forward_address
            target.errors = [*target.errors, error.message]
            ok = False
    if not ok:
        return None
    rule = Rule(
        form.name.data or "", conditions, actions, form.match.data or "all", bool(form.enabled.data)
    )
    try:
        return sieve_rules.check_rule(rule)
    except InvalidInput as error:
        if error.field == "name":
            form.name.errors = [*form.name.errors, error.message]
        else:
            form.form_errors.append(error.message)
        return None


def register(site: EditorSite, base: str) -> None:
    """Add the editor's routes under `base` (e.g. "/rules") to site.bp."""
    bp, prefix = site.bp, site.prefix

    def state_of(mailbox: Mailbox) -> EditorState:
        return sieve_rules.load(mail_store(), mailbox)

    def render(
        mailbox: Mailbox,
        ids: dict[str, Any],
        *,
        status: int = 200,
        vacation_form: VacationForm | None = None,
        forwarding_form: ForwardingForm | None = None,
        errors: list[str] | None = None,
    ) -> tuple[str, int]:
        state = state_of(mailbox)
        version = version_of(state)
        ruleset = state.ruleset or RuleSet()
        vacation = ruleset.vacation
        if vacation_form is None:
            vacation_form = VacationForm(
                formdata=None, data={**vacation.__dict__, "version": version}
            )
        if forwarding_form is None:
            forwarding_form = ForwardingForm(
                formdata=None, data={**ruleset.forwarding.__dict__, "version": version}
            )
        return render_template(
            "sieve_editor/rules.html",
            layout=site.layout,
            active_page=site.active_page,
            mailbox=mailbox,
            state=state,
            version=version,
            rules=ruleset.rules,
            vacation_form=vacation_form,
            forwarding_form=forwarding_form,
            errors=errors or [],
            recent_errors=sieve_scripts.recent_errors(mail_store(), mailbox, 5),
            pop3_only=not mailbox.imap_enabled,
            pop3_reason=sieve_scripts.POP3_ONLY_REASON,
            vacation_on_today=vacation.in_window(clock.now().date()),
            url=lambda view, **extra: site.url(view, ids, **extra),
        ), status

    def save(mailbox: Mailbox, ruleset: RuleSet) -> None:
        sieve_rules.save(
            db.session,
            mail_store(),
            mailbox,
            ruleset,
            actor=site.actor_of(mailbox),
            today=clock.now().date(),
        )
        db.session.commit()

    def editable(mailbox: Mailbox) -> tuple[EditorState, RuleSet]:
        state = state_of(mailbox)
        if state.ruleset is None:
            abort(409, "the active script was written by hand; use the Sieve editor")
        return state, state.ruleset

    def page(**ids: Any) -> tuple[str, int]:
        return render(site.mailbox_of(**ids), ids)

    def rule_page(
        mailbox: Mailbox, ids: dict[str, Any], form: RuleForm, index: int | None
    ) -> tuple[str, int]:
        _set_address_choices(form, my_addresses(mailbox))
        return render_template(
            "sieve_editor/rule.html",
            layout=site.layout,
            active_page=site.active_page,
            mailbox=mailbox,
            form=form,
            index=index,
            rows=range(CONDITION_ROWS),
            shown=_rows_to_show(form),
            pop3_only=not mailbox.imap_enabled,
            pop3_reason=sieve_scripts.POP3_ONLY_REASON,
            url=lambda view, **extra: site.url(view, ids, **extra),
        ), 200 if not form.errors and not form.form_errors else 400

    def edit_rule(index: int | None = None, **ids: Any) -> Response | tuple[str, int]:
        mailbox = site.mailbox_of(**ids)
        state, ruleset = editable(mailbox)
        if index is not None and not 0 <= index < len(ruleset.rules):
            abort(404)
        if request.method == "GET":
            data = (
                _rule_form_data(ruleset.rules[index])
                if index is not None
                else {
                    "enabled": True,
                    "create": True,
                    "forward_keep_copy": True,
                }
            )
            return rule_page(
                mailbox,
                ids,
                RuleForm(formdata=None, data={**data, "version": version_of(state)}),
                index,
            )
        form = RuleForm()
        if form.validate_on_submit() and _fresh(form, state):
            rule = _rule_from_form(form, my_addresses(mailbox))
            if rule is not None:
                rules = list(ruleset.rules)
                if index is None:
                    rules.append(rule)
                else:
                    rules[index] = rule
                try:
                    save(mailbox, replace(ruleset, rules=rules))
                except ProviderError as error:
                    db.session.rollback()
                    form.form_errors.append(error.message)
                else:
                    flash(f"Rule “{rule.name or 'unnamed'}” saved.", "success")
                    return redirect(site.url("page", ids))  # type: ignore[return-value]
        if not form.form_errors and not form.errors:
            form.form_errors.append("the form was not accepted; reload and try again")
        return rule_page(mailbox, ids, form, index)

    def rule_action(index: int, **ids: Any) -> Response | tuple[str, int]:
        mailbox = site.mailbox_of(**ids)
        state, ruleset = editable(mailbox)
        form = ActionForm()
        if not (form.validate_on_submit() and _fresh(form, state)):
            return render(mailbox, ids, status=400, errors=form.form_errors or ["the form expired"])
        if not 0 <= index < len(ruleset.rules):
            abort(404)
        rules = list(ruleset.rules)
        operation = request.form.get("operation", "")
        if operation == "delete":
            removed = rules.pop(index)
            message = f"Rule “{removed.name or 'unnamed'}” deleted."
        elif operation == "up" and index > 0:
            rules[index - 1], rules[index] = rules[index], rules[index - 1]
            message = "Rule moved up."
        elif operation == "down" and index < len(rules) - 1:
            rules[index + 1], rules[index] = rules[index], rules[index + 1]
            message = "Rule moved down."
        elif operation == "toggle":
            rules[index] = replace(rules[index], enabled=not rules[index].enabled)
            state_word = "on" if rules[index].enabled else "off"
            message = f"Rule “{rules[index].name or 'unnamed'}” switched {state_word}."
        else:
            return render(
                mailbox, ids, status=400, errors=[f"unknown operation {operation[:40]!r}"]
            )
        try:
            save(mailbox, replace(ruleset, rules=rules))
        except ProviderError as error:
            db.session.rollback()
            return render(mailbox, ids, status=400, errors=[error.message])
        flash(message, "success")
        return redirect(site.url("page", ids))  # type: ignore[return-value]

    def vacation(**ids: Any) -> Response | tuple[str, int]:
        mailbox = site.mailbox_of(**ids)
        state, ruleset = editable(mailbox)
        form = VacationForm()
        if form.validate_on_submit() and _fresh(form, state):
            wanted = Vacation(
                bool(form.enabled.data),
                form.subject.data or "",
                form.text.data or "",
                form.days.data if form.days.data is not None else 7,
                (form.first_day.data or "").strip(),
                (form.last_day.data or "").strip(),
            )
            try:
                save(mailbox, replace(ruleset, vacation=sieve_rules.check_vacation(wanted)))
            except InvalidInput as error:
                db.session.rollback()
                target = getattr(form, error.field or "", None)
                if target is not None and error.field != "version":
                    target.errors = [*target.errors, error.message]
                else:
                    form.form_errors.append(error.message)
            except ProviderError as error:
                db.session.rollback()
                form.form_errors.append(error.message)
            else:
                flash("Away reply " + ("on." if wanted.enabled else "off."), "success")
                return redirect(site.url("page", ids))  # type: ignore[return-value]
        return render(mailbox, ids, status=400, vacation_form=form)

    def forwarding(**ids: Any) -> Response | tuple[str, int]:
        mailbox = site.mailbox_of(**ids)
        state, ruleset = editable(mailbox)
        form = ForwardingForm()
        if form.validate_on_submit() and _fresh(form, state):
            wanted = Forwarding(form.address.data or "", bool(form.keep_copy.data))
            try:
                save(mailbox, replace(ruleset, forwarding=sieve_rules.check_forwarding(wanted)))
            except InvalidInput as error:
                db.session.rollback()
                if error.field == "address":
                    form.address.errors = [*form.address.errors, error.message]
                else:
                    form.form_errors.append(error.message)
            except ProviderError as error:
                db.session.rollback()
                form.form_errors.append(error.message)
            else:
                flash("Forwarding " + ("on." if wanted.address.strip() else "off."), "success")
                return redirect(site.url("page", ids))  # type: ignore[return-value]
        return render(mailbox, ids, status=400, forwarding_form=form)

    def sieve(**ids: Any) -> Response | tuple[str, int]:
        mailbox = site.mailbox_of(**ids)
        state = state_of(mailbox)
        status = 200
        if request.method == "GET":
            form = SieveForm(
                formdata=None, data={"source": state.source, "version": version_of(state)}
            )
        else:
            form = SieveForm()
            if form.validate_on_submit() and _fresh(form, state):
                source = (form.source.data or "").replace("\r\n", "\n")
                try:
                    sieve_scripts.put_script(
                        db.session,
                        mail_store(),
                        mailbox,
                        state.name,
                        source.encode("utf-8", "surrogateescape"),
                        activate=True,
                        actor=site.actor_of(mailbox),
                    )
                    db.session.commit()
                except ProviderError as error:
                    db.session.rollback()
                    form.source.errors = [*form.source.errors, error.message]
                else:
                    flash("Sieve script saved and active.", "success")
                    return redirect(site.url("page", ids))  # type: ignore[return-value]
            status = 400
        return render_template(
            "sieve_editor/sieve.html",
            layout=site.layout,
            active_page=site.active_page,
            mailbox=mailbox,
            form=form,
            state=state,
            url=lambda view, **extra: site.url(view, ids, **extra),
        ), status

    bp.add_url_rule(base, f"{prefix}_page", page, methods=["GET"])
    bp.add_url_rule(f"{base}/new", f"{prefix}_new", edit_rule, methods=["GET", "POST"])
    bp.add_url_rule(f"{base}/<int:index>", f"{prefix}_edit", edit_rule, methods=["GET", "POST"])
    bp.add_url_rule(f"{base}/<int:index>/action", f"{prefix}_action", rule_action, methods=["POST"])
    bp.add_url_rule(f"{base}/vacation", f"{prefix}_vacation", vacation, methods=["POST"])
    bp.add_url_rule(f"{base}/forwarding", f"{prefix}_forwarding", forwarding, methods=["POST"])
    bp.add_url_rule(f"{base}/sieve", f"{prefix}_sieve", sieve, methods=["GET", "POST"])


def my_addresses(mailbox: Mailbox) -> list[str]:
    """The mailbox's own addresses, once each (the "sent to my address" condition's choices)."""
    seen: dict[str, str] = {}
    for entry in identities.sender_overview(db.session, mailbox).entries:
        seen.setdefault(entry.address.lower(), entry.address)
    return list(seen.values())
