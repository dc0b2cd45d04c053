"""The FIX data dictionary: fields, types, enums, messages and repeating groups, read from QuickFIX's XML
format (``FIX44.xml``) at run time, and the validation of a message against it.

:meth:`DataDictionary.validate` raises :class:`FieldProblem` with the FIX SessionRejectReason (373) and the
RefTagID (371) of the first problem found; the session answers it with a Reject (35=3) and goes on.
Checks, in order: header/body/trailer order (14) and repeated tags (13); a known MsgType (11); required
fields (1); then each field: a value (4), a known tag (0), defined for this message type (2), its data
format (6), its enumerated values (5); repeating-group counts (16).

The dictionary is not shipped inside the package: pass the path of ``FIX44.xml`` (setting
``fix.data_dictionary``). QuickFIX's dictionary files are under the QuickFIX licence 1.0 (BSD-style with
attribution); the project reads the copy beside it rather than redistributing one.

Example::

    dd = DataDictionary.load("FIX44.xml")
    dd.validate(parse(raw))          # raises FieldProblem(reason=5, tag=40) for OrdType 'w'
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from greekfire.core.errors import DataError, GreekfireError
from greekfire.fix.message import FixMessage

# SessionRejectReason (373) values and the texts FIX engines send in Text (58)
INVALID_TAG_NUMBER = 0
REQUIRED_TAG_MISSING = 1
TAG_NOT_DEFINED_FOR_MESSAGE = 2
TAG_WITHOUT_VALUE = 4
VALUE_INCORRECT = 5
INCORRECT_DATA_FORMAT = 6
COMPID_PROBLEM = 9
SENDING_TIME_ACCURACY = 10
INVALID_MSGTYPE = 11
TAG_REPEATED = 13
TAG_OUT_OF_ORDER = 14
GROUP_COUNT = 16

REJECT_TEXT = {
    INVALID_TAG_NUMBER: "Invalid tag number",
    REQUIRED_TAG_MISSING: "Required tag missing",
    TAG_NOT_DEFINED_FOR_MESSAGE: "Tag not defined for this message type",
    3: "Undefined Tag",
    TAG_WITHOUT_VALUE: "Tag specified without a value",
    VALUE_INCORRECT: "Value is incorrect (out of range) for this tag",
    INCORRECT_DATA_FORMAT: "Incorrect data format for value",
    7: "Decryption problem",
    8: "Signature problem",
    COMPID_PROBLEM: "CompID problem",
    SENDING_TIME_ACCURACY: "SendingTime accuracy problem",
    INVALID_MSGTYPE: "Invalid MsgType",
    TAG_REPEATED: "Tag appears more than once",
    TAG_OUT_OF_ORDER: "Tag specified out of required order",
    15: "Repeating group fields out of order",
    GROUP_COUNT: "Incorrect NumInGroup count for repeating group",
}

_INT = re.compile(r"-?\d+\Z")
_DECIMAL = re.compile(r"-?(\d+\.?\d*|\.\d+)\Z")
_TIMESTAMP = re.compile(r"\d{8}-\d{2}:\d{2}:\d{2}(\.\d{1,9})?\Z")
_TIME = re.compile(r"\d{2}:\d{2}:\d{2}(\.\d{1,9})?\Z")
_DATE = re.compile(r"\d{8}\Z")
_MONTHYEAR = re.compile(r"\d{6}(\d{2}|w\d)?\Z")
_FORMATS: dict[str, re.Pattern[str]] = {
    **dict.fromkeys(("INT", "LENGTH", "SEQNUM", "NUMINGROUP", "TAGNUM", "DAYOFMONTH"), _INT),
    **dict.fromkeys(("FLOAT", "QTY", "PRICE", "PRICEOFFSET", "AMT", "PERCENTAGE"), _DECIMAL),
    "UTCTIMESTAMP": _TIMESTAMP, "UTCTIMEONLY": _TIME, "UTCDATEONLY": _DATE, "LOCALMKTDATE": _DATE,
    "MONTHYEAR": _MONTHYEAR, "BOOLEAN": re.compile(r"[YN]\Z"), "CHAR": re.compile(r".\Z", re.S),
}


class FieldProblem(GreekfireError):
    """A message breaks the dictionary: ``reason`` is the SessionRejectReason (373), ``tag`` the RefTagID
    (371; None when the problem is the message as a whole)."""

    def __init__(self, reason: int, tag: int | None = None) -> None:
        self.reason = reason
        self.tag = tag
        self.text = REJECT_TEXT.get(reason, "Invalid message")
        super().__init__(f"{self.text}" + (f" (tag {tag})" if tag is not None else ""))


@dataclass(slots=True)
class FieldDef:
    tag: int
    name: str
    type: str
    enums: frozenset[str] | None


@dataclass(slots=True)
class GroupDef:
    """A repeating group: its count tag, the first (delimiter) field of an entry, and what an entry holds."""

    count_tag: int
    delimiter: int
    fields: set[int] = field(default_factory=set)
    required: list[int] = field(default_factory=list)
    groups: dict[int, GroupDef] = field(default_factory=dict)


@dataclass(slots=True)
class MessageDef:
    msg_type: str
    name: str
    admin: bool
    fields: set[int] = field(default_factory=set)        # top-level fields (group count tags included)
    required: list[int] = field(default_factory=list)    # in dictionary order
    groups: dict[int, GroupDef] = field(default_factory=dict)


@dataclass(slots=True)
class DataDictionary:
    """Fields, header, trailer and messages of one FIX version (see the module docstring)."""

    begin_string: str
    fields: dict[int, FieldDef]
    header: MessageDef
    trailer: MessageDef
    messages: dict[str, MessageDef]
    by_name: dict[str, int]
    # per MsgType: tag -> (format, enums, several values) of every field allowed at the top level
    _specs: dict[str, dict[int, tuple[re.Pattern[str] | None, frozenset[str] | None, bool]]] = field(
        default_factory=dict, repr=False)

    @staticmethod
    def load(path: str | Path) -> DataDictionary:
        """Read a QuickFIX-format XML dictionary (cached per path). Raises DataError when it cannot."""
        return _load(str(Path(path).resolve()))

    def tag(self, name: str) -> int:
        """The tag number of a field name (``"ClOrdID"`` -> 11)."""
        return self.by_name[name]

    def is_admin(self, msg_type: str) -> bool:
        m = self.messages.get(msg_type)
        return bool(m and m.admin)

    def ordered_body(self, msg: FixMessage) -> list[tuple[int, str]]:
        """The body fields of ``msg`` (header and trailer left out) with top-level fields in tag order and
        each repeating group kept whole behind its count field: the order QuickFIX writes a body in."""
        mdef = self.messages.get(msg.msg_type)
        groups = mdef.groups if mdef else {}
        header = self.header.fields
        chunks: list[tuple[int, list[tuple[int, str]]]] = []
        items = [f for f in msg.fields if f[0] not in header and f[0] not in self.trailer.fields]
        i = 0
        while i < len(items):
            tag, value = items[i]
            chunk = [(tag, value)]
            i += 1
            g = groups.get(tag)
            if g is not None:
                j = _group_end(items, i, g)
                chunk.extend(items[i:j])
                i = j
            chunks.append((tag, chunk))
        chunks.sort(key=lambda c: c[0])
        return [f for _, chunk in chunks for f in chunk]

    def validate(self, msg: FixMessage) -> None:
        """Check ``msg`` against the dictionary; raise :class:`FieldProblem` for the first problem."""
        fields = msg.fields
        header, trailer = self.header.fields, self.trailer.fields
        mdef = self.messages.get(msg.msg_type)
        groups = mdef.groups if mdef is not None else {}
        # structure: header, then body, then trailer; a tag outside a group only once
        section = 0
        seen: set[int] = set()
        counts: list[tuple[int, GroupDef, int, int]] = []   # (count tag, group, declared, found)
        i, n = 0, len(fields)
        while i < n:
            tag, value = fields[i]
            if tag in header:
                if section != 0:
                    raise FieldProblem(TAG_OUT_OF_ORDER, tag)
            elif tag in trailer:
                section = 2
            elif section == 2:
                raise FieldProblem(TAG_OUT_OF_ORDER, tag)
            else:
                section = 1
            if tag in seen:
                raise FieldProblem(TAG_REPEATED, tag)
            seen.add(tag)
            i += 1
            g = groups.get(tag) if section == 1 else self.header.groups.get(tag)
            if g is not None:
                j, entries = _group_span(fields, i, g)
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                counts.append((tag, g, declared, entries))
                for t, v in fields[i:j]:
                    self._check_field(t, v, None)
                i = j
        if mdef is None:
            raise FieldProblem(INVALID_MSGTYPE)
        for t in self.header.required:
            if t not in seen:
                raise FieldProblem(REQUIRED_TAG_MISSING, t)
        for t in mdef.required:
            if t not in seen:
                raise FieldProblem(REQUIRED_TAG_MISSING, t)
        specs = self._specs.get(mdef.msg_type) or self._build_specs(mdef)
        for tag, value in fields:
            if tag not in seen:
                continue
            spec = specs.get(tag)
            if spec is None or value == "":  # the slow path says which problem it is
                self._check_field(tag, value, mdef)
                continue
            fmt, enums, several = spec
            if fmt is not None and not fmt.match(value):
                raise FieldProblem(INCORRECT_DATA_FORMAT, tag)
            if enums is not None and (
                any(v not in enums for v in value.split(" ")) if several else value not in enums
            ):
                raise FieldProblem(VALUE_INCORRECT, tag)
        for tag, _g, declared, found in counts:
            if declared != found:
                raise FieldProblem(GROUP_COUNT, tag)

    def _build_specs(
        self, mdef: MessageDef,
    ) -> dict[int, tuple[re.Pattern[str] | None, frozenset[str] | None, bool]]:
        """What :meth:`validate` checks of each field allowed at the top level of ``mdef`` (one dict lookup a
        field instead of four)."""
        specs = {}
        for tag in mdef.fields | self.header.fields | self.trailer.fields:
            fdef = self.fields.get(tag)
            if fdef is not None:
                several = fdef.type in ("MULTIPLEVALUESTRING", "MULTIPLECHARVALUE")
                specs[tag] = (_FORMATS.get(fdef.type), fdef.enums, several)
        self._specs[mdef.msg_type] = specs
        return specs

    def _check_field(self, tag: int, value: str, mdef: MessageDef | None) -> None:
        if value == "":
            raise FieldProblem(TAG_WITHOUT_VALUE, tag)
        fdef = self.fields.get(tag)
        if fdef is None:
            raise FieldProblem(INVALID_TAG_NUMBER, tag)
        if mdef is not None and tag not in mdef.fields and tag not in self.header.fields \
                and tag not in self.trailer.fields:
            raise FieldProblem(TAG_NOT_DEFINED_FOR_MESSAGE, tag)
        fmt = _FORMATS.get(fdef.type)
        if fmt is not None and not fmt.match(value):
            raise FieldProblem(INCORRECT_DATA_FORMAT, tag)
        if fdef.enums is not None:
            if fdef.type in ("MULTIPLEVALUESTRING", "MULTIPLECHARVALUE"):
                if any(v not in fdef.enums for v in value.split(" ")):
                    raise FieldProblem(VALUE_INCORRECT, tag)
            elif value not in fdef.enums:
                raise FieldProblem(VALUE_INCORRECT, tag)


def _group_span(fields: list[tuple[int, str]], i: int, g: GroupDef) -> tuple[int, int]:
    """(end index, number of entries) of the group whose entries start at ``fields[i]``."""
    entries = 0
    n = len(fields)
    while i < n:
        tag = fields[i][0]
        if tag == g.delimiter:
            entries += 1
        elif tag not in g.fields or entries == 0:
            break
        i += 1
        sub = g.groups.get(tag)
        if sub is not None:
            i, _ = _group_span(fields, i, sub)
    return i, entries


def _group_end(fields: list[tuple[int, str]], i: int, g: GroupDef) -> int:
    return _group_span(fields, i, g)[0]


@lru_cache(maxsize=8)
def _load(path: str) -> DataDictionary:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        raise DataError("fix.data_dictionary", path, f"cannot read the FIX data dictionary: {e}") from None
    if root.tag != "fix":
        raise DataError("fix.data_dictionary", path, "not a QuickFIX-format dictionary (root is not <fix>)")
    begin = f"{root.get('type', 'FIX')}.{root.get('major')}.{root.get('minor')}"
    fields: dict[int, FieldDef] = {}
    by_name: dict[str, int] = {}
    for f in root.iterfind("fields/field"):
        tag = int(f.get("number", "0"))
        enums = frozenset(v.get("enum", "") for v in f.iterfind("value")) or None
        fields[tag] = FieldDef(tag, f.get("name", ""), f.get("type", "STRING"), enums)
        by_name[fields[tag].name] = tag
    components = {c.get("name", ""): c for c in root.iterfind("components/component")}

    def fill(node: ET.Element, target: MessageDef | GroupDef, required_here: bool) -> None:
        for child in node:
            name = child.get("name", "")
            req = required_here and child.get("required") == "Y"
            if child.tag == "field":
                tag = by_name[name]
                target.fields.add(tag)
                if req:
                    target.required.append(tag)
            elif child.tag == "component":
                fill(components[name], target, req)
            elif child.tag == "group":
                count = by_name[name]
                target.fields.add(count)
                if req:
                    target.required.append(count)
                g = GroupDef(count, 0)
                fill(child, g, True)
                first = next(iter(child))
                while first.tag == "component":        # a group that starts with a component
                    first = next(iter(components[first.get("name", "")]))
                g.delimiter = by_name[first.get("name", "")]
                target.groups[count] = g

    header = MessageDef("header", "Header", True)
    trailer = MessageDef("trailer", "Trailer", True)
    for section, target in (("header", header), ("trailer", trailer)):
        node = root.find(section)
        if node is not None:
            fill(node, target, True)
    messages = {}
    for m in root.iterfind("messages/message"):
        mdef = MessageDef(m.get("msgtype", ""), m.get("name", ""), m.get("msgcat") == "admin")
        fill(m, mdef, True)
        messages[mdef.msg_type] = mdef
    # the wire fields parse() has already checked are not required again
    for t in (8, 9, 35):
        if t in header.required:
            header.required.remove(t)
    if 10 in trailer.required:
        trailer.required.remove(10)
    return DataDictionary(begin, fields, header, trailer, messages, by_name)
