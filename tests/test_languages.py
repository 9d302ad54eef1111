"""Every built-in language, for real, through the default provider (the local bubblewrap sandbox).

One table (``SPECS``) holds each language's small programs; every test is parametrized over it, and a guard
test fails when a built-in language has no entry here, so a new language cannot ship untested.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest

import execbox
from execbox.languages import default_registry

UNICODE = "héllo wörld — 你好 🌍 ∑ ß"
STDIN = "alpha\nbeta  gamma\n\tindented\nüñíçødé 二\n"
ARGS = ["one", "two words", "ünï", "--flag", ""]
ARGS_OUT = "[one]\n[two words]\n[ünï]\n[--flag]\n[]\n"


@dataclass(frozen=True)
class Multi:
    """A program in several files: ``code`` (the default entry file) plus ``files``."""

    code: str
    files: dict[str, str]
    stdout: str = "Hello, util!\n"


@dataclass(frozen=True)
class Entry:
    """Several files, no ``code``; ``entry`` (not the first file) is the one to run."""

    files: dict[str, str]
    entry: str
    stdout: str


@dataclass(frozen=True)
class Crash:
    """A program that fails at run time: its output so far, exit code or signal, and a stderr fragment."""

    code: str
    stdout: str
    exit_code: int | None
    signal: int | None
    stderr: str


@dataclass(frozen=True)
class Spec:
    hello: str
    stdin: str  # echoes stdin to stdout, unchanged
    args: str | None  # prints each argument as "[arg]\n"; None: the language has no argv
    multi: Multi
    entry: Entry
    crash: Crash
    unicode: str  # prints UNICODE (spelled @U@ in the source) and a newline
    compile_error: tuple[str, str] | None = None  # (code, fragment of the compiler's message)
    notes: dict[str, str] = field(default_factory=dict)


SPECS: dict[str, Spec] = {
    "python": Spec(
        hello='print("Hello, world!")\n',
        stdin="import sys\nfor line in sys.stdin:\n    print(line, end='')\n",
        args="import sys\nfor a in sys.argv[1:]:\n    print(f'[{a}]')\n",
        multi=Multi("import util\nprint(util.greet('util'))\n",
                    {"util.py": "def greet(name):\n    return f'Hello, {name}!'\n"}),
        entry=Entry({"first.py": "print('first')\n", "second.py": "print('second')\n"}, "second.py",
                    "second\n"),
        crash=Crash("print('before', flush=True)\n1 / 0\n", "before\n", 1, None, "ZeroDivisionError"),
        unicode='print("@U@")\n',
    ),
    "javascript": Spec(
        hello='console.log("Hello, world!");\n',
        stdin='process.stdout.write(require("fs").readFileSync(0, "utf8"));\n',
        args="for (const a of process.argv.slice(2)) console.log(`[${a}]`);\n",
        multi=Multi("const util = require('./util');\nconsole.log(util.greet('util'));\n",
                    {"util.js": "module.exports = { greet: (name) => `Hello, ${name}!` };\n"}),
        entry=Entry({"first.js": "console.log('first');\n", "second.js": "console.log('second');\n"},
                    "second.js", "second\n"),
        crash=Crash("console.log('before');\nnull.boom;\n", "before\n", 1, None, "TypeError"),
        unicode='console.log("@U@");\n',
    ),
    "typescript": Spec(
        hello='const message: string = "Hello, world!";\nconsole.log(message);\n',
        stdin='import * as fs from "fs";\nprocess.stdout.write(fs.readFileSync(0, "utf8"));\n',
        args="for (const a of process.argv.slice(2)) console.log(`[${a}]`);\n",
        multi=Multi('import { greet } from "./util";\nconsole.log(greet("util"));\n',
                    {"util.ts": "export function greet(name: string): string {\n"
                                "  return `Hello, ${name}!`;\n}\n"}),
        entry=Entry({"first.ts": "console.log('first');\n", "second.ts": "console.log('second');\n"},
                    "second.ts", "second\n"),
        crash=Crash("console.log('before');\nthrow new Error('boom');\n", "before\n", 1, None, "Error: boom"),
        unicode='console.log("@U@");\n',
        compile_error=('const n: number = "not a number";\nconsole.log(n);\n',
                       "error TS2322: Type 'string' is not assignable to type 'number'"),
    ),
    "bash": Spec(
        hello='echo "Hello, world!"\n',
        stdin='while IFS= read -r line; do printf "%s\\n" "$line"; done\n',
        args='for a in "$@"; do printf "[%s]\\n" "$a"; done\n',
        multi=Multi("source ./util.sh\ngreet util\n",
                    {"util.sh": 'greet() { printf "Hello, %s!\\n" "$1"; }\n'}),
        entry=Entry({"first.sh": "echo first\n", "second.sh": "echo second\n"}, "second.sh", "second\n"),
        crash=Crash("echo before\nno_such_command_xyz\n", "before\n", 127, None,
                    "no_such_command_xyz: command not found"),
        unicode='echo "@U@"\n',
    ),
    "c": Spec(
        hello='#include <stdio.h>\nint main(void) { puts("Hello, world!"); return 0; }\n',
        stdin="#include <stdio.h>\nint main(void) { int c; while ((c = getchar()) != EOF) putchar(c); }\n",
        args='#include <stdio.h>\nint main(int argc, char **argv) {\n'
             '  for (int i = 1; i < argc; i++) printf("[%s]\\n", argv[i]);\n}\n',
        multi=Multi('#include "util.h"\nint main(void) { greet("util"); return 0; }\n',
                    {"util.h": "#pragma once\nvoid greet(const char *name);\n",
                     "util.c": '#include <stdio.h>\n#include "util.h"\n'
                               'void greet(const char *name) { printf("Hello, %s!\\n", name); }\n'}),
        # every .c file is compiled and linked: the entry file is the one with main, wherever it is listed
        entry=Entry({"helper.c": '#include <stdio.h>\nvoid helper(void) { puts("from helper.c"); }\n',
                     "prog.c": "void helper(void);\nint main(void) { helper(); return 0; }\n"},
                    "prog.c", "from helper.c\n"),
        crash=Crash('#include <stdio.h>\n#include <stdlib.h>\n'
                    'int main(void) { puts("before"); fflush(stdout); abort(); }\n', "before\n", None, 6, ""),
        unicode='#include <stdio.h>\nint main(void) { puts("@U@"); return 0; }\n',
        compile_error=("int main(void) { return undeclared_variable; }\n",
                       "error: \u2018undeclared_variable\u2019 undeclared"),
    ),
    "cpp": Spec(
        hello='#include <iostream>\nint main() { std::cout << "Hello, world!" << std::endl; }\n',
        stdin="#include <iostream>\n#include <string>\nint main() {\n  std::string line;\n"
              "  while (std::getline(std::cin, line)) std::cout << line << '\\n';\n}\n",
        args='#include <iostream>\nint main(int argc, char **argv) {\n'
             '  for (int i = 1; i < argc; i++) std::cout << "[" << argv[i] << "]\\n";\n}\n',
        multi=Multi('#include <iostream>\n#include "util.h"\n'
                    'int main() { std::cout << greet("util") << "\\n"; }\n',
                    {"util.h": "#pragma once\n#include <string>\n"
                               "std::string greet(const std::string &name);\n",
                     "util.cpp": '#include "util.h"\n'
                                 'std::string greet(const std::string &name) {\n'
                                 '  return "Hello, " + name + "!";\n}\n'}),
        entry=Entry({"helper.cpp": '#include <iostream>\n'
                                   'void helper() { std::cout << "from helper.cpp\\n"; }\n',
                     "prog.cpp": "void helper();\nint main() { helper(); }\n"},
                    "prog.cpp", "from helper.cpp\n"),
        crash=Crash('#include <iostream>\n#include <stdexcept>\n'
                    'int main() { std::cout << "before" << std::endl; throw std::runtime_error("boom"); }\n',
                    "before\n", None, 6, "what():  boom"),
        unicode='#include <iostream>\nint main() { std::cout << "@U@" << std::endl; }\n',
        compile_error=("int main() { return undeclared_variable; }\n",
                       "error: \u2018undeclared_variable\u2019 was not declared in this scope"),
    ),
    "java": Spec(
        hello='public class Main {\n  public static void main(String[] args) {\n'
              '    System.out.println("Hello, world!");\n  }\n}\n',
        stdin="import java.io.*;\npublic class Main {\n"
              "  public static void main(String[] args) throws IOException {\n"
              "    BufferedReader in = new BufferedReader(new InputStreamReader(System.in));\n"
              "    for (String line; (line = in.readLine()) != null; ) System.out.println(line);\n  }\n}\n",
        args='public class Main {\n  public static void main(String[] args) {\n'
             '    for (String a : args) System.out.println("[" + a + "]");\n  }\n}\n',
        multi=Multi('public class Main {\n  public static void main(String[] args) {\n'
                    '    System.out.println(Util.greet("util"));\n  }\n}\n',
                    {"Util.java": 'public class Util {\n  public static String greet(String name) {\n'
                                  '    return "Hello, " + name + "!";\n  }\n}\n'}),
        entry=Entry({"First.java": 'public class First { public static void main(String[] a) '
                                   '{ System.out.println("first"); } }\n',
                     "Second.java": 'public class Second { public static void main(String[] a) '
                                    '{ System.out.println("second"); } }\n'},
                    "Second.java", "second\n"),
        crash=Crash('public class Main {\n  public static void main(String[] args) {\n'
                    '    System.out.println("before");\n'
                    '    throw new IllegalStateException("boom");\n  }\n}\n',
                    "before\n", 1, None, "java.lang.IllegalStateException: boom"),
        unicode='public class Main {\n  public static void main(String[] args) {\n'
                '    System.out.println("@U@");\n  }\n}\n',
        compile_error=('public class Main {\n  public static void main(String[] args) {\n'
                       '    int x = undeclaredVariable;\n  }\n}\n', "cannot find symbol"),
    ),
    "go": Spec(
        hello='package main\n\nimport "fmt"\n\nfunc main() { fmt.Println("Hello, world!") }\n',
        stdin='package main\n\nimport (\n\t"bufio"\n\t"fmt"\n\t"os"\n)\n\nfunc main() {\n'
              "\ts := bufio.NewScanner(os.Stdin)\n\tfor s.Scan() {\n\t\tfmt.Println(s.Text())\n\t}\n}\n",
        args='package main\n\nimport (\n\t"fmt"\n\t"os"\n)\n\nfunc main() {\n'
             '\tfor _, a := range os.Args[1:] {\n\t\tfmt.Printf("[%s]\\n", a)\n\t}\n}\n',
        multi=Multi('package main\n\nimport "fmt"\n\nfunc main() { fmt.Println(greet("util")) }\n',
                    {"util.go": 'package main\n\n'
                                'func greet(name string) string { return "Hello, " + name + "!" }\n'}),
        # every .go file is built into one package main: the entry is the one with main()
        entry=Entry({"helper.go": 'package main\n\nimport "fmt"\n\n'
                                  'func helper() { fmt.Println("from helper.go") }\n',
                     "prog.go": "package main\n\nfunc main() { helper() }\n"},
                    "prog.go", "from helper.go\n"),
        crash=Crash('package main\n\nimport "fmt"\n\n'
                    'func main() {\n\tfmt.Println("before")\n\tpanic("boom")\n}\n',
                    "before\n", 2, None, "panic: boom"),
        unicode='package main\n\nimport "fmt"\n\nfunc main() { fmt.Println("@U@") }\n',
        compile_error=("package main\n\nfunc main() { _ = undeclaredVariable }\n",
                       "undefined: undeclaredVariable"),
    ),
    "rust": Spec(
        hello='fn main() {\n    println!("Hello, world!");\n}\n',
        stdin="use std::io::Read;\n\nfn main() {\n    let mut s = String::new();\n"
              "    std::io::stdin().read_to_string(&mut s).unwrap();\n    print!(\"{}\", s);\n}\n",
        args='fn main() {\n    for a in std::env::args().skip(1) {\n        println!("[{}]", a);\n    }\n}\n',
        multi=Multi('mod util;\n\nfn main() {\n    println!("{}", util::greet("util"));\n}\n',
                    {"util.rs": 'pub fn greet(name: &str) -> String {\n'
                                '    format!("Hello, {}!", name)\n}\n'}),
        entry=Entry({"first.rs": 'fn main() { println!("first"); }\n',
                     "second.rs": 'fn main() { println!("second"); }\n'}, "second.rs", "second\n"),
        crash=Crash('fn main() {\n    println!("before");\n    panic!("boom");\n}\n', "before\n", 101, None,
                    "panicked at 'boom'"),
        unicode='fn main() {\n    println!("@U@");\n}\n',
        compile_error=("fn main() {\n    let x: i32 = undeclared_variable;\n}\n",
                       "cannot find value `undeclared_variable` in this scope"),
    ),
    "csharp": Spec(
        hello='using System;\nclass Program {\n'
              '  static void Main() { Console.WriteLine("Hello, world!"); }\n}\n',
        stdin="using System;\nclass Program {\n  static void Main() {\n    string line;\n"
              "    while ((line = Console.ReadLine()) != null) Console.WriteLine(line);\n  }\n}\n",
        args='using System;\nclass Program {\n  static void Main(string[] args) {\n'
             '    foreach (var a in args) Console.WriteLine("[" + a + "]");\n  }\n}\n',
        multi=Multi('using System;\nclass Program {\n'
                    '  static void Main() { Console.WriteLine(Util.Greet("util")); }\n}\n',
                    {"Util.cs": 'public static class Util {\n'
                                '  public static string Greet(string name) {\n'
                                '    return "Hello, " + name + "!";\n  }\n}\n'}),
        # every .cs file is compiled into one assembly: the entry is the one with Main
        entry=Entry({"Helper.cs": 'static class Helper {\n'
                                  '  public static void Say() {\n'
                                  '    System.Console.WriteLine("from Helper.cs");\n  }\n}\n',
                     "Program.cs": "class Program { static void Main() { Helper.Say(); } }\n"},
                    "Program.cs", "from Helper.cs\n"),
        crash=Crash('using System;\nclass Program {\n  static void Main() {\n'
                    '    Console.WriteLine("before");\n'
                    '    throw new InvalidOperationException("boom");\n  }\n}\n',
                    "before\n", 1, None, "System.InvalidOperationException: boom"),
        unicode='using System;\nclass Program {\n  static void Main() { Console.WriteLine("@U@"); }\n}\n',
        compile_error=("class Program {\n  static void Main() { int x = undeclaredVariable; }\n}\n",
                       "error CS0103: The name `undeclaredVariable' does not exist in the current context"),
    ),
    "ruby": Spec(
        hello='puts "Hello, world!"\n',
        stdin="$stdin.each_line { |line| print line }\n",
        args='ARGV.each { |a| puts "[#{a}]" }\n',
        multi=Multi('require_relative "util"\nputs greet("util")\n',
                    {"util.rb": 'def greet(name)\n  "Hello, #{name}!"\nend\n'}),
        entry=Entry({"first.rb": "puts 'first'\n", "second.rb": "puts 'second'\n"}, "second.rb", "second\n"),
        crash=Crash('puts "before"\n$stdout.flush\nraise ArgumentError, "boom"\n', "before\n", 1, None,
                    "boom (ArgumentError)"),
        unicode='puts "@U@"\n',
    ),
    "php": Spec(
        hello='<?php\necho "Hello, world!\\n";\n',
        stdin="<?php\nwhile (($line = fgets(STDIN)) !== false) {\n    echo $line;\n}\n",
        args='<?php\nforeach (array_slice($argv, 1) as $a) {\n    echo "[$a]\\n";\n}\n',
        multi=Multi("<?php\nrequire 'util.php';\necho greet('util'), \"\\n\";\n",
                    {"util.php": '<?php\nfunction greet($name) {\n    return "Hello, $name!";\n}\n'}),
        entry=Entry({"first.php": "<?php echo \"first\\n\";\n", "second.php": "<?php echo \"second\\n\";\n"},
                    "second.php", "second\n"),
        crash=Crash('<?php\necho "before\\n";\nthrow new RuntimeException("boom");\n', "before\n", 255, None,
                    "Uncaught RuntimeException: boom"),
        unicode='<?php\necho "@U@\\n";\n',
    ),
    "sql": Spec(
        hello="SELECT 'Hello, world!';\n",
        stdin="CREATE TABLE lines(line TEXT);\n.import /dev/stdin lines\nSELECT line FROM lines;\n",
        args=None,  # sqlite3 has no argv: the run step does not pass arguments
        multi=Multi(".read util.sql\nSELECT msg FROM greetings;\n",
                    {"util.sql": "CREATE TABLE greetings(msg TEXT);\n"
                                 "INSERT INTO greetings VALUES ('Hello, ' || 'util' || '!');\n"}),
        entry=Entry({"first.sql": "SELECT 'first';\n", "second.sql": "SELECT 'second';\n"}, "second.sql",
                    "second\n"),
        crash=Crash("SELECT 'before';\nSELECT * FROM no_such_table;\nSELECT 'after';\n", "before\n", 1, None,
                    "no such table: no_such_table"),
        unicode="SELECT '@U@';\n",
    ),
}

LANGS = sorted(SPECS)
COMPILED = sorted(n for n in LANGS if SPECS[n].compile_error is not None)


def _ok(result: execbox.ExecutionResult) -> str:
    """The failure message for a run expected to succeed: everything needed to see why it did not."""
    c = result.compile
    return (f"status={result.status.value} exit={result.exit_code} signal={result.signal} "
            f"message={result.message!r}\nstdout={result.stdout!r}\nstderr={result.stderr!r}"
            + (f"\ncompile stdout={c.stdout!r}\ncompile stderr={c.stderr!r}" if c else ""))


def _assert_ok(result: execbox.ExecutionResult, stdout: str) -> None:
    assert result.status is execbox.Status.OK, _ok(result)
    assert result.exit_code == 0, _ok(result)
    assert result.stdout == stdout, _ok(result)


def test_every_builtin_language_has_a_spec_and_is_installed() -> None:
    registry = default_registry()
    assert sorted(registry.names()) == LANGS
    missing = {lang.name: lang.missing() for lang in registry if lang.missing()}
    assert missing == {}, f"toolchains missing (run scripts/bootstrap as root): {missing}"


def test_compiled_languages_are_the_ones_with_a_compile_step() -> None:
    assert sorted(lang.name for lang in default_registry() if lang.compile is not None) == COMPILED


@pytest.mark.parametrize("language", LANGS)
def test_hello_world(language: str) -> None:
    result = execbox.run(SPECS[language].hello, language)
    _assert_ok(result, "Hello, world!\n")
    assert result.stderr == ""
    assert result.language == language
    assert (result.compile is None) == (language not in COMPILED)


@pytest.mark.parametrize("language", LANGS)
def test_stdin_is_read_and_echoed(language: str) -> None:
    _assert_ok(execbox.run(SPECS[language].stdin, language, stdin=STDIN), STDIN)


@pytest.mark.parametrize("language", LANGS)
def test_command_line_args(language: str) -> None:
    code = SPECS[language].args
    if code is None:  # the language's run step has no {args}: asking for them is refused, not ignored
        with pytest.raises(execbox.RequestError, match="take no command-line arguments"):
            execbox.run("select 1;", language, args=ARGS)
        return
    _assert_ok(execbox.run(code, language, args=ARGS), ARGS_OUT)


@pytest.mark.parametrize("language", LANGS)
def test_multi_file_program(language: str) -> None:
    multi = SPECS[language].multi
    _assert_ok(execbox.run(multi.code, language, files=multi.files), multi.stdout)


@pytest.mark.parametrize("language", LANGS)
def test_chosen_entry_file(language: str) -> None:
    e = SPECS[language].entry
    assert next(iter(e.files)) != e.entry  # the default (first file) would be the wrong one
    _assert_ok(execbox.run(files=e.files, entry=e.entry, language=language), e.stdout)


@pytest.mark.parametrize("language", LANGS)
def test_runtime_error(language: str) -> None:
    crash = SPECS[language].crash
    result = execbox.run(crash.code, language)
    assert result.status is execbox.Status.RUNTIME_ERROR, _ok(result)
    assert (result.exit_code, result.signal) == (crash.exit_code, crash.signal), _ok(result)
    if crash.exit_code is not None:
        assert result.exit_code != 0
        assert result.message == f"exited with code {crash.exit_code}"
    else:
        assert result.message == f"killed by signal {crash.signal}"
    assert result.stdout == crash.stdout, _ok(result)
    assert crash.stderr in result.stderr, _ok(result)
    if result.compile is not None:
        assert result.compile.status is execbox.Status.OK


@pytest.mark.parametrize("language", COMPILED)
def test_compile_error(language: str) -> None:
    code, fragment = SPECS[language].compile_error or ("", "")
    result = execbox.run(code, language)
    assert result.status is execbox.Status.COMPILE_ERROR, _ok(result)
    assert result.compile is not None
    assert result.compile.status is execbox.Status.RUNTIME_ERROR
    assert result.compile.exit_code not in (None, 0)
    assert fragment in result.compile.stdout + result.compile.stderr, _ok(result)
    assert result.stdout == "" and result.stderr == ""  # the program never ran
    assert result.message is not None and result.message.startswith("compile step: ")


@pytest.mark.parametrize("language", LANGS)
def test_version_is_detected(language: str) -> None:
    result = execbox.run(SPECS[language].hello, language)
    assert result.version is not None
    assert re.fullmatch(r"\d+\.\d+(\.\d+)?", result.version), result.version


@pytest.mark.parametrize("language", LANGS)
def test_unicode_output_round_trips(language: str) -> None:
    result = execbox.run(SPECS[language].unicode.replace("@U@", UNICODE), language)
    _assert_ok(result, UNICODE + "\n")


def test_sql_runs_statements_in_order_and_stops_at_the_first_error() -> None:
    # -bail: 'after' must not be printed (checked by the crash spec's exact stdout too)
    result = execbox.run(SPECS["sql"].crash.code, "sql")
    assert "after" not in result.stdout


def test_php_reports_an_error_once() -> None:
    # log_errors would print each error a second time ("PHP Fatal error: ...") when error_log is unset
    code = '<?php\ntrigger_error("careful", E_USER_WARNING);\nthrow new RuntimeException("boom");\n'
    result = execbox.run(code, "php")
    assert result.status is execbox.Status.RUNTIME_ERROR
    assert result.stderr.count("Warning: careful") == 1, result.stderr
    assert result.stderr.count("Uncaught RuntimeException: boom") == 1, result.stderr
    assert "PHP Fatal error" not in result.stderr


# --- execute_code(arguments=...): call main(**arguments) and return its JSON value -------------------------

def test_execute_code_python_returns_main_value() -> None:
    code = ("def main(a, b, name='x'):\n"
            "    print('side effect')\n"
            "    return {'sum': a + b, 'name': name, 'items': [a, b], 'ok': True, 'none': None}\n")
    result = execbox.execute_code(code, "python", arguments={"a": 2, "b": 3, "name": "ünï"})
    assert result.status is execbox.Status.OK, _ok(result)
    assert result.return_value == {"sum": 5, "name": "ünï", "items": [2, 3], "ok": True, "none": None}
    assert result.stdout == "side effect\n"


def test_execute_code_python_main_raising_is_a_runtime_error() -> None:
    result = execbox.execute_code("def main(x):\n    raise ValueError(f'bad {x}')\n", "python",
                                  arguments={"x": 7})
    assert result.status is execbox.Status.RUNTIME_ERROR
    assert result.return_value is None
    assert "ValueError: bad 7" in result.stderr


def test_execute_code_javascript_returns_main_value() -> None:
    code = ("function main({ a, b }) {\n  console.log('side effect');\n"
            "  return { sum: a + b, items: [a, b], text: `${a}+${b}` };\n}\n")
    result = execbox.execute_code(code, "javascript", arguments={"a": 2, "b": 3})
    assert result.status is execbox.Status.OK, _ok(result)
    assert result.return_value == {"sum": 5, "items": [2, 3], "text": "2+3"}
    assert result.stdout == "side effect\n"


def test_execute_code_javascript_async_main() -> None:
    code = ("async function main({ n }) {\n"
            "  await new Promise((r) => setTimeout(r, 10));\n  return n * 2;\n}\n")
    result = execbox.execute_code(code, "javascript", arguments={"n": 21})
    assert result.status is execbox.Status.OK, _ok(result)
    assert result.return_value == 42


def test_execute_code_javascript_main_throwing_is_a_runtime_error() -> None:
    code = "function main() { throw new Error('nope'); }\n"
    result = execbox.execute_code(code, "javascript", arguments={})
    assert result.status is execbox.Status.RUNTIME_ERROR
    assert result.return_value is None
    assert "Error: nope" in result.stderr


def test_execute_code_without_arguments_just_runs() -> None:
    result = execbox.execute_code("print('plain')\n", "python")
    assert result.status is execbox.Status.OK
    assert (result.stdout, result.return_value) == ("plain\n", None)


def test_go_test_links_against_prebuilt_cgo_free_packages() -> None:
    """scripts/bootstrap installs std and testify without cgo (go.toml's test step selects them with
    -installsuffix=nocgo): seen from inside the sandbox with go's own environment, none is stale, so `go test`
    does not compile net/http and testify again at each run."""
    go = default_registry().get("go")
    packages = "net/http github.com/stretchr/testify/assert gopkg.in/yaml.v3"
    r = execbox.run(f"go list -installsuffix=nocgo -f '{{{{.ImportPath}}}} stale={{{{.Stale}}}}' {packages}", "bash",
                    env=go.env)
    assert r.ok, r.stderr
    assert r.stdout.split("\n")[:-1] == [f"{p} stale=false" for p in packages.split()], r.stdout


# --- Java: the class to run is found as judges find it (DMOJ runs any class with main), in a file of any name

PISTON_JAVA = ('public class HelloWorld {\n    public static void main(String[] args) {\n'
               '        System.out.println("OK");\n    }\n}\n')  # Piston's own Java test program (test.java)

JAVA_VARIANTS = {
    "public class of another name": ({"test.java": PISTON_JAVA}, "OK\n"),
    "not public": ({"Main.java": 'class Prog { public static void main(String[] a) { System.out.println("np"); } }'},
                   "np\n"),
    "final": ({"Main.java": 'final class Prog {\n  public static void main(String[] a) '
                            '{ System.out.println("f"); }\n}'},
              "f\n"),
    "abstract": ({"sol.java": 'public abstract class Sol {\n  public static void main(String[] a) '
                              '{ System.out.println("abs"); }\n}'}, "abs\n"),
    "strictfp, varargs": ({"Main.java": 'strictfp class P { static public void main(String... a) '
                                        '{ System.out.println("sfp"); } }'}, "sfp\n"),
    "package": ({"Main.java": 'package com.example.app;\n\npublic class Main {\n  public static void main(String[] a) '
                              '{ System.out.println(Main.class.getName()); }\n}\n'}, "com.example.app.Main\n"),
    "two classes in one file": ({"Main.java": 'import java.util.*;\nclass Helper { static int two() { return 2; } }\n'
                                              'class Prog { public static void main(String[] a) '
                                              '{ System.out.println("two " + Helper.two()); } }\n'}, "two 2\n"),
    "the entry's class named after it has no main": (
        {"Main.java": 'public class Main { static String hi() { return "hi"; } }\n'
                      'class Runner { public static void main(String[] a) { System.out.println(Main.hi()); } }\n'},
        "hi\n"),
    "main in a second file": ({"Main.java": 'class Util { static String s() { return "util"; } }\n',
                               "runner.java": 'public class Runner { public static void main(String[] a) '
                                              '{ System.out.println(Util.s()); } }\n'}, "util\n"),
    "main in a comment does not count": ({"Main.java": '/* public class Main { public static void main(String[] a) '
                                                       '{} } */\nclass Real { public static void main(String[] a) '
                                                       '{ System.out.println("real"); } }\n'}, "real\n"),
}


@pytest.mark.parametrize("variant", list(JAVA_VARIANTS))
def test_java_runs_the_class_with_main_whatever_the_files_are_called(variant: str) -> None:
    files, stdout = JAVA_VARIANTS[variant]
    result = execbox.run(files=files, language="java")  # the first file is the entry
    _assert_ok(result, stdout)
    assert result.compile is not None and result.compile.status is execbox.Status.OK


def test_java_without_a_main_is_a_compile_error() -> None:
    for files in ({"Main.java": "public class Main { static void helper() {} }\n"},
                  {"test.java": "class A { public void main(String[] a) {} }\n"}):  # not static: no main
        result = execbox.run(files=files, language="java")
        assert result.status is execbox.Status.COMPILE_ERROR, _ok(result)
        assert result.compile is not None and "no class has a method public static void main" in result.compile.stderr


def test_java_with_mains_only_in_other_files_names_them() -> None:
    result = execbox.run(files={"Main.java": "class Util {}\n",
                                "A.java": "class A { public static void main(String[] a) {} }\n",
                                "B.java": "class B { public static void main(String[] a) {} }\n"}, language="java")
    assert result.status is execbox.Status.COMPILE_ERROR, _ok(result)
    assert result.compile is not None and "several other files do (A, B)" in result.compile.stderr


def test_java_support_file_names_are_reserved() -> None:
    for name in (".execbox_main", ".execbox_javac.java"):
        with pytest.raises(execbox.InvalidFileError, match="reserved"):
            execbox.run(files={"Main.java": "class Main {}", name: "x"}, language="java")


@pytest.mark.parametrize(("files", "fast"), [
    ({"Main.java": JAVA_VARIANTS["two classes in one file"][0]["Main.java"]
      .replace("class Prog", "public class Main")}, "two 2\n"),
    ({"Main.java": "class Solution {}\npublic class Main {\n  public static void main(String[] args) {}\n}\n"}, ""),
    ({"Main.java": "public class Main { public static void main(String[] a) {} }", "Util.java": "class Util {}"}, ""),
    ({"test.java": PISTON_JAVA}, False),  # javac wants it in HelloWorld.java
    ({"Main.java": "public class Main { public static void main(String[] a) {} }", "u.java": "public class U {}"},
     False),
    ({"Main.java": JAVA_VARIANTS["package"][0]["Main.java"]}, False),
    ({"Main.java": JAVA_VARIANTS["not public"][0]["Main.java"]}, False),  # no class Main
    ({"Main.java": JAVA_VARIANTS["the entry's class named after it has no main"][0]["Main.java"]}, False),
    ({"Main.java": JAVA_VARIANTS["main in a comment does not count"][0]["Main.java"]}, False),
    ({"Main.java": "public class Main { public static void main(int n) {} }"}, False),  # not main(String[])
    ({"Main.java": "public class Main { public static void main(String[] a) { String s = \"\\u0041\"; } }"}, False),
    ({"Main.java": "public class Main { public static void main(String[] a) { } "}, False),  # unbalanced
])
def test_java_fast_path_only_when_plain_javac_surely_suffices(files: dict[str, str], fast: str | bool) -> None:
    """The fast compile step (plain javac, the stem as the class) is taken only when it surely works; the
    general step finds the class itself, so a doubt costs time, never a wrong run. ``fast``: False, or the
    output of the program, which then runs."""
    java = default_registry().get("java")
    data = {n: t.encode() for n, t in files.items()}
    entry = next(iter(files))
    build, support = java.build(data, entry)
    assert java.fast is not None and (build == java.fast.compile) is (fast is not False)
    assert (support.get(".execbox_main") == f"{entry[:-5]}\n".encode()) is (fast is not False)
    if fast is not False:  # and then it does work
        _assert_ok(execbox.run(files=files, language="java"), fast)
