"""Generate the tfps(1) man page and the bash completion of `tfps` from tfps.build_parser().

install.sh runs it when it builds tfps.pyz, so both always describe the commands and options of
the tfps.py they ship with:

    python3 docs/gen_cli_docs.py --tfps tfps.py --man tfps.1 --bash-completion tfps.bash-completion

It needs only the standard library (it imports tfps.py from the given path, which imports
PyMySQL only when it talks to MySQL) and writes nothing else. The man page's date is the date of
`__version__` in CHANGELOG.md beside tfps.py, else SOURCE_DATE_EPOCH, else tfps.py's mtime, so
the same checkout always gives the same files.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import os
import re
import sys

PROG = "tfps"

# Words for arguments that build_parser() gives no help text; the parser's own help always wins.
FALLBACK_HELP = {
    "user": "the account's user, as the PBX names it",
    "domain": "the account's domain (lowercased)",
    "number": "the dialed number, as the PBX would send it",
    "ip": "an IP address",
    "cdr": "a CSV file of call detail records (see the README for its columns)",
    "mode": "the verdict mode, overriding [server] mode",
    "account": "only this account",
    "limit": "show at most N rows",
    "server": "the TFPS server to send the INVITE to",
    "from_": "the account in the From header",
    "transport": "the transport of the INVITE",
    "kind": "the kind of entry: number (a prefix of normalized numbers), ip (an address or network), "
            "ua (a User-Agent pattern)",
    "action": "add or remove one entry, list the entries, or import a file of entries",
    "timeout": "how long to wait for the answer, in seconds",
}

DESCRIPTION = """\
TFPS is a SIP redirect server that a PBX asks before every international call whether the call
may go out. It answers each INVITE within a millisecond or two with a verdict code (A00 approved,
R01 to R15 rejected) and a human-readable reason, decided from blacklists, high-risk
destinations, per-account limits and each account's own learned habits.
.PP
.B tfps serve
runs the server; the other commands manage the accounts, lists and history in the database that
the configuration names, which the running servers pick up within [database] reload_interval.
Every command takes
.B \\-h
(\\fB\\-\\-help\\fR) for its own usage. Tables are aligned text; commands with
.B \\-\\-json
print JSON instead.
"""

FILES = [
    ("/etc/tfps/tfps.conf", "The configuration, read by every command unless -c or --db says otherwise. Mode 0640, "
     "owner root:tfps: it may hold the database password and API keys. With no configuration at all the built-in "
     "defaults are used, with the SQLite database tfps.db in the working directory."),
    ("/var/lib/tfps/tfps.db", "The SQLite database that install.sh sets as [database] url (directory mode 0700, "
     "owner tfps)."),
    ("/etc/systemd/system/tfps.service", "The systemd unit; logs go to the journal (journalctl -u tfps)."),
    ("/usr/local/bin/tfps", "The program: a Python zip application with tfps.py, schema.sql and PyMySQL inside."),
]

EXIT_STATUS = [
    ("0", "Success."),
    ("1", "Failure, said in one line on standard error: an unknown account, a database error, a bad line in a "
     "configuration, import or CDR file (naming the file and line), no answer to probe, a bad reputation."),
    ("2", "Usage error: an unknown command or option, or an argument out of its bounds, said in one line with "
     "the usage."),
]

SIGNALS = [
    ("SIGHUP", "tfps serve re-reads mode, trusted_peers, redirect_host and the [policy], [reputation] and "
     "[alerts] sections of the configuration (systemctl reload tfps)."),
    ("SIGTERM, SIGINT", "tfps serve writes what it holds to the database and exits 0."),
]

SEE_ALSO = ["systemctl(1)", "journalctl(1)", "systemd.exec(5)", "sqlite3(1)", "mariadb(1)"]


def load_tfps(path):
    """tfps.py as a module, without writing bytecode next to it."""
    sys.dont_write_bytecode = True
    spec = importlib.util.spec_from_file_location("tfps", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["tfps"] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


def release_date(tfps_path, version):
    changelog = os.path.join(os.path.dirname(os.path.abspath(tfps_path)), "CHANGELOG.md")
    try:
        with open(changelog, encoding="utf-8") as fh:
            found = re.search(rf"^## \[{re.escape(version)}\] - (\d{{4}}-\d{{2}}-\d{{2}})\s*$", fh.read(), re.M)
        if found:
            return found.group(1)
    except OSError:
        pass
    stamp = os.environ.get("SOURCE_DATE_EPOCH")
    stamp = int(stamp) if stamp and stamp.isdigit() else os.stat(tfps_path).st_mtime
    return datetime.datetime.fromtimestamp(stamp, datetime.timezone.utc).strftime("%Y-%m-%d")


# -- the parser, read -------------------------------------------------------------------------------

class Arg:
    """One argument of a command, as the man page and the completion need it."""

    def __init__(self, action):
        self.options = list(action.option_strings)
        self.dest = action.dest
        self.takes_value = action.nargs != 0
        self.choices = [str(c) for c in action.choices] if action.choices else []
        if action.metavar:
            self.metavar = action.metavar
        elif self.choices:
            self.metavar = ""
        else:
            self.metavar = action.dest.upper()
        self.help = action.help if action.help not in (None, argparse.SUPPRESS) else FALLBACK_HELP.get(action.dest, "")
        self.required = bool(action.required) if self.options else action.nargs not in ("?", "*")
        self.repeatable = isinstance(action, argparse._AppendAction)
        default = action.default
        self.default = None
        if self.takes_value and default not in (None, "", argparse.SUPPRESS) and "default" not in self.help:
            self.default = f"{default:g}" if isinstance(default, float) else str(default)
        self.files = self.metavar in ("FILE",) or self.metavar.endswith(".csv") or "a file" in self.help

    @property
    def positional(self):
        return not self.options


class Command:
    def __init__(self, name, help_text, parser):
        self.name = name
        self.help = help_text or ""
        self.args = []
        self.groups = []  # lists of Args that exclude one another, and whether one is required
        by_action = {}
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            by_action[id(action)] = Arg(action)
            self.args.append(by_action[id(action)])
        for group in parser._mutually_exclusive_groups:
            members = [by_action[id(a)] for a in group._group_actions if id(a) in by_action]
            self.groups.append((members, group.required))

    @property
    def options(self):
        return [a for a in self.args if not a.positional]

    @property
    def positionals(self):
        return [a for a in self.args if a.positional]


def read_parser(parser):
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help for a in sub._choices_actions}
    commands = [Command(name, helps.get(name), p) for name, p in sub.choices.items()]
    top = [Arg(a) for a in parser._actions if a.option_strings]
    return commands, top


def common_options(commands):
    """The options every command has, with the same help: described once."""
    first = {tuple(a.options): a.help for a in commands[0].options}
    for command in commands[1:]:
        mine = {tuple(a.options): a.help for a in command.options}
        first = {k: v for k, v in first.items() if mine.get(k) == v}
    return [a for a in commands[0].options if tuple(a.options) in first]


# -- the man page -----------------------------------------------------------------------------------

def roff(text):
    """Text for a roff line: backslashes and hyphens escaped, no control character at the start."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    lines = []
    for line in text.split("\n"):
        if line.startswith((".", "'")):
            line = "\\&" + line
        lines.append(line)
    return "\n".join(lines)


def bold(text):
    return f"\\fB{roff(text)}\\fR"


def italic(text):
    return f"\\fI{roff(text)}\\fR"


def arg_synopsis(arg, brackets=True):
    if arg.positional:
        text = "{" + "|".join(bold(c) for c in arg.choices) + "}" if arg.choices else italic(arg.metavar)
    else:
        text = bold(arg.options[-1] if arg.options[-1].startswith("--") and len(arg.options) == 1 else arg.options[0])
        if arg.takes_value:
            value = italic(arg.metavar) if arg.metavar else "{" + "|".join(bold(c) for c in arg.choices) + "}"
            text += "\\ " + value  # an unbreakable space: an option stays with its value
    if arg.repeatable:
        text += " ..."
    if brackets and not arg.required:
        text = f"[{text}]"
    return text


def command_synopsis(command):
    words = [bold(f"{PROG} {command.name}")]
    grouped = {}
    for members, required in command.groups:
        for member in members:
            grouped[id(member)] = (members, required)
    done = set()
    for arg in command.options + command.positionals:
        if id(arg) in done:
            continue
        if id(arg) in grouped:
            members, required = grouped[id(arg)]
            done.update(id(m) for m in members)
            inner = " | ".join(arg_synopsis(m, brackets=False) for m in members)
            words.append(f"({inner})" if required else f"[{inner}]")
        else:
            words.append(arg_synopsis(arg))
    return " ".join(words)


def arg_tag(arg):
    if arg.positional:
        return italic(arg.metavar) if not arg.choices else "{" + "|".join(bold(c) for c in arg.choices) + "}"
    names = ", ".join(bold(o) for o in arg.options)
    if arg.takes_value:
        names += " " + (italic(arg.metavar) if arg.metavar else "{" + "|".join(bold(c) for c in arg.choices) + "}")
    return names


def arg_text(arg):
    text = arg.help
    if text and not text.endswith("."):
        text += "."
    extra = []
    if arg.choices and arg.metavar:  # the tag shows the metavar, not the choices
        extra.append("One of " + ", ".join(arg.choices) + ".")
    if arg.repeatable and "repeat" not in text:
        extra.append("May be given more than once.")
    if arg.required and not arg.positional:
        extra.append("Required.")
    if arg.default is not None:
        extra.append(f"Default: {arg.default}.")
    return roff(" ".join([text] + extra if text else extra))


def man_page(tfps, parser, date):
    commands, top = read_parser(parser)
    common = common_options(commands)
    common_ids = {tuple(a.options) for a in common}
    out = [
        f'.\\" tfps(1): generated by docs/gen_cli_docs.py from tfps.build_parser() of TFPS {tfps.__version__}.',
        '.\\" Do not edit: change the parser or the generator.',
        f'.TH TFPS 1 "{date}" "TFPS {tfps.__version__}" "User Commands"',
        ".SH NAME",
        f"{PROG} \\- Telephony Fraud Prevention System, a SIP redirect server against toll fraud, and its CLI",
        ".SH SYNOPSIS",
        f"{bold(PROG)} {italic('COMMAND')} [{italic('OPTION')}]... [{italic('ARGUMENT')}]...",
        ".br",
        f"{bold(PROG)} {{{bold('--version')}|{bold('--help')}}}",
        ".SH DESCRIPTION",
        DESCRIPTION.rstrip("\n"),
        ".SH OPTIONS",
    ]
    for arg in top:
        out += [".TP", arg_tag(arg), arg_text(arg)]
    out += [".PP", "Options that every command takes:"]
    for arg in common:
        out += [".TP", arg_tag(arg), arg_text(arg)]
    out += [".SH COMMANDS"]
    for command in commands:
        out += [f".SS {command.name}", roff(command.help + ".") if command.help else "",
                ".PP", ".nh", ".na", command_synopsis(command), ".ad", ".hy"]
        for arg in command.positionals + [a for a in command.options if tuple(a.options) not in common_ids]:
            out += [".TP", arg_tag(arg), arg_text(arg)]
    out += [".SH FILES"]
    for path, text in FILES:
        out += [".TP", italic(path), roff(text)]
    out += [".SH SIGNALS"]
    for name, text in SIGNALS:
        out += [".TP", bold(name), roff(text)]
    out += [".SH EXIT STATUS"]
    for code, text in EXIT_STATUS:
        out += [".TP", bold(code), roff(text)]
    out += [".SH SEE ALSO", ",\n".join(".BR " + re.sub(r"^(.*)\((\d)\)$", r"\1 (\2)", page) for page in SEE_ALSO),
            ".PP", "The README.md and CHANGELOG.md of the TFPS sources."]
    return "\n".join(line for line in out if line != "") + "\n"


# -- bash completion --------------------------------------------------------------------------------

def shell_words(words):
    words = list(words)
    for word in words:
        if not re.fullmatch(r"[A-Za-z0-9_.,:@/+=-]+", word):
            raise ValueError(f"{word!r} is not a plain word for the completion script")
    return " ".join(words)


def bash_completion(tfps, parser):
    commands, top = read_parser(parser)
    lines = [
        f"# bash completion for {PROG} (TFPS {tfps.__version__}): commands, their options and the values of",
        "# options with a fixed set. Generated by docs/gen_cli_docs.py from tfps.build_parser(); do not edit.",
        "# It needs bash alone, not the bash-completion package.",
        "",
        f"_{PROG}() {{",
        "    local cur prev cmd word i n takes",
        "    COMPREPLY=()",
        '    cur="${COMP_WORDS[COMP_CWORD]}"',
        '    prev=""',
        '    (( COMP_CWORD > 0 )) && prev="${COMP_WORDS[COMP_CWORD-1]}"',
        '    # --opt=VALUE: bash splits the "=" off as a word of its own',
        '    if [[ $cur == "=" ]]; then cur=""; fi',
        '    if [[ $prev == "=" ]] && (( COMP_CWORD > 1 )); then prev="${COMP_WORDS[COMP_CWORD-2]}"; fi',
        "    cmd=''",
        "    for (( i = 1; i < COMP_CWORD; i++ )); do",
        '        case "${COMP_WORDS[i]}" in',
        "            -*) ;;",
        '            *) cmd="${COMP_WORDS[i]}"; break ;;',
        "        esac",
        "    done",
        '    if [[ -z $cmd ]]; then',
        "        if [[ $cur == -* ]]; then",
        f'            COMPREPLY=( $(compgen -W "{shell_words(o for a in top for o in a.options)}" -- "$cur") )',
        "        else",
        f'            COMPREPLY=( $(compgen -W "{shell_words(c.name for c in commands)}" -- "$cur") )',
        "        fi",
        "        return 0",
        "    fi",
        '    case "$cmd" in',
    ]
    for command in commands:
        lines.append(f"        {command.name})")
        takes = [o for a in command.options if a.takes_value for o in a.options]
        lines.append(f'            takes=" {shell_words(takes)} "')
        # The value of an option: its choices, a file name, or nothing to offer.
        cases = []
        for arg in command.options:
            if not arg.takes_value:
                continue
            pattern = "|".join(arg.options)
            if arg.choices:
                cases.append(f'                {pattern}) COMPREPLY=( $(compgen -W "{shell_words(arg.choices)}" -- "$cur") ); return 0 ;;')
            elif arg.files:
                cases.append(f'                {pattern}) compopt -o filenames 2>/dev/null; COMPREPLY=( $(compgen -f -- "$cur") ); return 0 ;;')
            else:
                cases.append(f"                {pattern}) return 0 ;;")
        if cases:
            lines += ['            case "$prev" in', *cases, "            esac"]
        options = [o for a in command.options for o in a.options] + ["-h", "--help"]
        lines += ["            if [[ $cur == -* ]]; then",
                  f'                COMPREPLY=( $(compgen -W "{shell_words(options)}" -- "$cur") )',
                  "                return 0",
                  "            fi"]
        positionals = command.positionals
        if positionals and any(a.choices or a.files for a in positionals):
            # Which positional argument is this word? Count the words before it that are neither
            # options nor the values of options.
            lines += ["            n=0",
                      "            for (( i = i + 1; i < COMP_CWORD; i++ )); do",
                      '                word="${COMP_WORDS[i]}"',
                      '                if [[ $word == -* ]]; then',
                      '                    if [[ $takes == *" $word "* ]]; then',
                      '                        (( i++ ))',
                      '                        [[ ${COMP_WORDS[i]} == "=" ]] && (( i++ ))',
                      "                    fi",
                      '                elif [[ $word != "=" ]]; then',
                      "                    (( n++ ))",
                      "                fi",
                      "            done",
                      '            case "$n" in']
            for index, arg in enumerate(positionals):
                if arg.choices:
                    lines.append(f'                {index}) COMPREPLY=( $(compgen -W "{shell_words(arg.choices)}" -- "$cur") ) ;;')
                elif arg.files:
                    lines.append(f'                {index}) compopt -o filenames 2>/dev/null; COMPREPLY=( $(compgen -f -- "$cur") ) ;;')
            lines.append("            esac")
        lines.append("            ;;")
    lines += ["    esac",
              "    return 0",
              "}",
              f"complete -F _{PROG} {PROG}",
              ""]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Write the tfps(1) man page and the bash completion of tfps.")
    ap.add_argument("--tfps", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "tfps.py"),
                    metavar="PATH", help="the tfps.py to describe (default: the one of this checkout)")
    ap.add_argument("--man", metavar="FILE", help="write the man page here")
    ap.add_argument("--bash-completion", metavar="FILE", help="write the bash completion script here")
    args = ap.parse_args(argv)
    if not (args.man or args.bash_completion):
        ap.error("nothing to do: give --man FILE and/or --bash-completion FILE")
    tfps = load_tfps(args.tfps)
    parser = tfps.build_parser()
    parser.prog = PROG
    outputs = []
    if args.man:
        outputs.append((args.man, man_page(tfps, parser, release_date(args.tfps, tfps.__version__))))
    if args.bash_completion:
        outputs.append((args.bash_completion, bash_completion(tfps, parser)))
    for path, text in outputs:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
