#!/usr/bin/env python3
"""Derive tests/cri_contract.py from a CRI api.proto text.

Usage: python hack/derive_cri_contract.py PATH/TO/upstream/api.proto [SOURCE-LABEL] > tests/cri_contract.py

PATH is a local copy of upstream's staging/src/k8s.io/cri-api/pkg/apis/runtime/v1/api.proto (kubernetes/kubernetes).
This is a small, dependency-free parser for the proto3 subset the CRI uses (package, options, services with
(server/client) streaming rpcs, messages with nested messages/enums, scalar/message/enum/map fields, `repeated`,
proto3 `optional`, `oneof`, `reserved`, bracketed field options). It deliberately does NOT use protoc, so the table it
writes is an independent reading of the upstream text that the generated descriptor is then checked against.
"""

from __future__ import annotations

import re
import sys

SCALARS = {
    "double", "float", "int32", "int64", "uint32", "uint64", "sint32", "sint64",
    "fixed32", "fixed64", "sfixed32", "sfixed64", "bool", "string", "bytes",
}

_TOKEN = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<lcomment>//[^\n]*)
  | (?P<bcomment>/\*.*?\*/)
  | (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
  | (?P<number>-?(?:0[xX][0-9a-fA-F]+|\d+(?:\.\d*)?(?:[eE][+-]?\d+)?))
  | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
  | (?P<punct>[{}()\[\]<>;=,])
    """,
    re.VERBOSE | re.DOTALL,
)


def tokenize(text: str) -> list[str]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise SyntaxError(f"unexpected character {text[pos]!r} at offset {pos}")
        pos = m.end()
        if m.lastgroup in ("ws", "lcomment", "bcomment"):
            continue
        out.append(m.group())
    return out


class Parser:
    def __init__(self, text: str):
        self.toks = tokenize(text)
        self.i = 0
        self.package = ""
        self.services: dict[str, dict] = {}
        self.messages: dict[str, dict] = {}  # fqname -> {field: raw tuple}, declaration order (nested after parent)
        self.enums: dict[str, dict] = {}
        self.field_options: dict[str, dict] = {}
        self.top_messages: list[str] = []
        self.top_enums: list[str] = []
        self._raw_fields: list[tuple[str, str, dict]] = []  # (message fq, field name, raw) for type resolution

    # -- token helpers
    def peek(self, k: int = 0) -> str | None:
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else None

    def next(self) -> str:
        tok = self.toks[self.i]
        self.i += 1
        return tok

    def expect(self, tok: str) -> None:
        got = self.next()
        if got != tok:
            raise SyntaxError(f"expected {tok!r}, got {got!r} (token {self.i})")

    def skip_statement(self) -> None:
        depth = 0
        while True:
            tok = self.next()
            if tok == "{":
                depth += 1
            elif tok == "}":
                depth -= 1
                if depth == 0:
                    return
            elif tok == ";" and depth == 0:
                return

    # -- grammar
    def parse(self) -> "Parser":
        while self.peek() is not None:
            tok = self.peek()
            if tok == "syntax":
                self.skip_statement()
            elif tok == "package":
                self.next()
                self.package = self.next()
                self.expect(";")
            elif tok in ("import", "option"):
                self.skip_statement()
            elif tok == "service":
                self.parse_service()
            elif tok == "message":
                self.top_messages.append(self.parse_message(self.package))
            elif tok == "enum":
                self.top_enums.append(self.parse_enum(self.package))
            elif tok == ";":
                self.next()
            else:
                raise SyntaxError(f"unexpected top-level token {tok!r}")
        self.resolve_types()
        return self

    def fq(self, scope: str, name: str) -> str:
        return f"{scope}.{name}" if scope else name

    def parse_service(self) -> None:
        self.expect("service")
        name = self.fq(self.package, self.next())
        methods: dict[str, tuple] = {}
        self.expect("{")
        while self.peek() != "}":
            if self.peek() == "option":
                self.skip_statement()
                continue
            if self.peek() == ";":
                self.next()
                continue
            self.expect("rpc")
            mname = self.next()
            self.expect("(")
            cstream = self.peek() == "stream"
            if cstream:
                self.next()
            itype = self.next()
            self.expect(")")
            self.expect("returns")
            self.expect("(")
            sstream = self.peek() == "stream"
            if sstream:
                self.next()
            otype = self.next()
            self.expect(")")
            if self.peek() == "{":
                self.skip_statement()
            else:
                self.expect(";")
            methods[mname] = (itype, otype, cstream, sstream)
        self.expect("}")
        self.services[name] = methods

    def parse_options(self, key: str) -> None:
        # [name = value, (ext).name = value, ...]
        self.expect("[")
        opts = {}
        while True:
            parts = []
            while self.peek() != "=":
                parts.append(self.next())
            self.expect("=")
            val = self.next()
            opts["".join(parts)] = {"true": True, "false": False}.get(val, val)
            if self.peek() == ",":
                self.next()
                continue
            self.expect("]")
            break
        if opts:
            self.field_options[key] = opts

    def parse_field(self, msg: str, fields: dict, label: str, oneof: str | None) -> None:
        if self.peek() == "map":
            self.next()
            self.expect("<")
            ktype = self.next()
            self.expect(",")
            vtype = self.next()
            self.expect(">")
            ftype, kv, label = "map", (ktype, vtype), "repeated"
        else:
            ftype, kv = self.next(), None
        fname = self.next()
        self.expect("=")
        number = int(self.next(), 0)
        if self.peek() == "[":
            self.parse_options(f"{msg}.{fname}")
        self.expect(";")
        if fname in fields:
            raise SyntaxError(f"duplicate field {msg}.{fname}")
        raw = {"number": number, "type": ftype, "label": label, "kv": kv, "oneof": oneof}
        fields[fname] = raw
        self._raw_fields.append((msg, fname, raw))

    def parse_message(self, scope: str) -> str:
        self.expect("message")
        name = self.fq(scope, self.next())
        fields: dict[str, dict] = {}
        self.messages[name] = fields
        self.expect("{")
        while self.peek() != "}":
            tok = self.peek()
            if tok == "message":
                self.parse_message(name)
            elif tok == "enum":
                self.parse_enum(name)
            elif tok in ("option", "reserved", "extensions"):
                self.skip_statement()
            elif tok == ";":
                self.next()
            elif tok == "oneof":
                self.next()
                oneof = self.next()
                self.expect("{")
                while self.peek() != "}":
                    if self.peek() == "option":
                        self.skip_statement()
                        continue
                    self.parse_field(name, fields, "singular", oneof)
                self.expect("}")
            elif tok in ("repeated", "optional"):
                self.next()
                self.parse_field(name, fields, tok, None)
            else:
                self.parse_field(name, fields, "singular", None)
        self.expect("}")
        return name

    def parse_enum(self, scope: str) -> str:
        self.expect("enum")
        name = self.fq(scope, self.next())
        values: dict[str, int] = {}
        self.expect("{")
        while self.peek() != "}":
            if self.peek() in ("option", "reserved"):
                self.skip_statement()
                continue
            if self.peek() == ";":
                self.next()
                continue
            vname = self.next()
            self.expect("=")
            values[vname] = int(self.next(), 0)
            if self.peek() == "[":
                self.parse_options(f"{name}.{vname}")
            self.expect(";")
        self.expect("}")
        self.enums[name] = values
        return name

    # -- name resolution (protobuf scoping: innermost scope outwards)
    def resolve(self, scope: str, tname: str) -> str:
        if tname in SCALARS:
            return tname
        if tname.startswith("."):
            cand = tname[1:]
            if cand in self.messages or cand in self.enums:
                return cand
            raise NameError(tname)
        parts = scope.split(".")
        while True:
            cand = ".".join(parts + [tname]) if parts else tname
            if cand in self.messages or cand in self.enums:
                return cand
            if not parts:
                raise NameError(f"cannot resolve {tname!r} from {scope!r}")
            parts.pop()

    def resolve_types(self) -> None:
        for msg, _fname, raw in self._raw_fields:
            if raw["type"] == "map":
                raw["kv"] = (self.resolve(msg, raw["kv"][0]), self.resolve(msg, raw["kv"][1]))
            else:
                raw["type"] = self.resolve(msg, raw["type"])
        for methods in self.services.values():
            for mname, (i, o, cs, ss) in list(methods.items()):
                methods[mname] = (self.resolve(self.package, i), self.resolve(self.package, o), cs, ss)


def render(p: Parser, source: str) -> str:
    out = []
    w = out.append
    w('"""CRI runtime.v1 wire contract, derived from upstream api.proto by hack/derive_cri_contract.py. Do not edit.')
    w("")
    w(f"Source: {source}")
    w("SERVICES: service -> {method: (input type, output type, client_streaming, server_streaming)}")
    w("MESSAGES: message -> {field: (number, type, label, map (key, value) types or None, oneof name or None)};")
    w("  type is a scalar name, a fully qualified message/enum name, or 'map'; label is singular/optional/repeated.")
    w("  Declaration order is kept (top-level messages in file order, each followed by its nested ones).")
    w("ENUMS: enum -> {value name: number}. FIELD_OPTIONS: field -> {option: value} (standard options only).")
    w('"""')
    w("")
    w(f"PACKAGE = {p.package!r}")
    w(f"TOP_LEVEL_MESSAGES = {len(p.top_messages)}")
    w(f"TOP_LEVEL_ENUMS = {len(p.top_enums)}")
    w("")
    w("SERVICES = {")
    for sname, methods in p.services.items():
        w(f"    {sname!r}: {{")
        for mname, sig in methods.items():
            w(f"        {mname!r}: {sig!r},")
        w("    },")
    w("}")
    w("")
    w("MESSAGES = {")
    for mname, fields in p.messages.items():
        body = ", ".join(
            f"{f!r}: {(r['number'], r['type'], r['label'], r['kv'], r['oneof'])!r}" for f, r in fields.items()
        )
        w(f"    {mname!r}: {{{body}}},")
    w("}")
    w("")
    w("ENUMS = {")
    for ename, values in p.enums.items():
        body = ", ".join(f"{v!r}: {n}" for v, n in values.items())
        w(f"    {ename!r}: {{{body}}},")
    w("}")
    w("")
    w("FIELD_OPTIONS = {")
    for key, opts in p.field_options.items():
        w(f"    {key!r}: {opts!r},")
    w("}")
    w("")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    if len(argv) not in (2, 3):
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        parser = Parser(f.read()).parse()
    source = argv[2] if len(argv) == 3 else "kubernetes/kubernetes staging/src/k8s.io/cri-api/pkg/apis/runtime/v1/api.proto"
    sys.stdout.write(render(parser, source))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
