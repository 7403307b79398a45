"""Prompts as data files: load, validate, render in a sandbox, hash, and compare with the registry (pure)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Literal

import yaml
from jinja2 import StrictUndefined, TemplateSyntaxError, meta, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ragloop.tasks.settings import yaml_problem

PROMPT_SUFFIX = ".yaml"

class QAPair(BaseModel):
    """A generated question with the answer its context supports."""

    question: str
    answer: str


class GeneratedQuestion(BaseModel):
    """A generated question alone (unanswerable items, paraphrases)."""

    question: str


# The output models a prompt file may declare, by the name it uses in `output:`.
OUTPUT_MODELS: dict[str, type[BaseModel]] = {"QAPair": QAPair, "GeneratedQuestion": GeneratedQuestion}


class PromptError(ValueError):
    """A prompt file is invalid or cannot be rendered; the message names the prompt and the field."""


class PromptExample(BaseModel):
    """A worked example shown to the model before the real input (few-shot): the user turn is the
    prompt's `user` template rendered with `inputs`, the assistant turn `output` as JSON."""

    model_config = ConfigDict(extra="forbid")
    inputs: dict[str, Any]
    output: dict[str, Any]


class PromptFile(BaseModel):
    """The schema of a prompt file (YAML)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    description: str = ""
    # Names, or {name: type} with type `text` or `list` (of texts). Untyped names take their type from the
    # template: a variable a `{% for %}` loop iterates is a list, any other is text.
    input_variables: list[str] | dict[str, Literal["text", "list"]]
    output: str | None = None  # the name of the pydantic model the reply must parse into
    params: dict[str, Any] = Field(default_factory=dict)  # temperature, max_tokens, ...
    system: str = ""
    user: str
    examples: list[PromptExample] = Field(default_factory=list)


_ENV = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)


@dataclass(frozen=True)
class Prompt:
    name: str
    prompt_hash: str  # sha256 of the file's bytes: the prompt's version
    text: str  # the file, as recorded in the registry
    input_variables: tuple[str, ...]
    output: str | None
    params: dict = field(default_factory=dict)
    system: str = ""
    user: str = ""
    input_types: dict[str, str] = field(default_factory=dict)  # name -> "text" | "list", checked by render()
    examples: tuple[tuple[dict, str], ...] = ()  # (inputs, reply JSON): few-shot turns before the real one

    @property
    def prompt_id(self) -> str:
        return f"{self.name}@{self.prompt_hash[:12]}"

    def output_model(self) -> type[BaseModel] | None:
        return OUTPUT_MODELS.get(self.output) if self.output else None

    def render(self, **variables: Any) -> list[dict]:
        """Chat messages with the variables filled in. Variable values are data: template syntax
        inside them is never evaluated. A missing or undeclared variable fails before any call."""
        missing = [v for v in self.input_variables if v not in variables]
        extra = [v for v in variables if v not in self.input_variables]
        if missing or extra:
            raise PromptError(
                f"prompt {self.name!r}: " + "; ".join(
                    ([f"missing variable(s) {missing}"] if missing else [])
                    + ([f"undeclared variable(s) {extra}"] if extra else [])
                )
            )
        wrong = [_type_problem(name, variables[name], self.input_types.get(name, "text")) for name in self.input_variables]
        wrong = [w for w in wrong if w]
        if wrong:
            # A string where a list of passages is expected would render one character per passage.
            raise PromptError(f"prompt {self.name!r}: " + "; ".join(wrong))
        try:
            messages = []
            if self.system.strip():
                messages.append({"role": "system", "content": _ENV.from_string(self.system).render(**variables)})
            user = _ENV.from_string(self.user)
            for inputs, reply in self.examples:
                messages.append({"role": "user", "content": user.render(**inputs)})
                messages.append({"role": "assistant", "content": reply})
            messages.append({"role": "user", "content": user.render(**variables)})
            return messages
        except (UndefinedError, SecurityError) as exc:
            raise PromptError(f"prompt {self.name!r}: {exc}") from exc


def _type_problem(name: str, value: Any, kind: str) -> str | None:
    """Why `value` does not fit the declared type, or None."""
    if kind == "list":
        if not isinstance(value, (list, tuple)):
            return f"variable {name!r} must be a list of texts, got {type(value).__name__}"
        bad = [type(v).__name__ for v in value if not isinstance(v, str)]
        return f"variable {name!r} must be a list of texts, got items of type {sorted(set(bad))}" if bad else None
    if not isinstance(value, (str, int, float)) or isinstance(value, bool):
        return f"variable {name!r} must be text, got {type(value).__name__}"
    return None


def _iterated(templates: list) -> set[str]:
    """Variables a `{% for x in var %}` loop iterates directly, in the parsed templates."""
    return {loop.iter.name for ast in templates for loop in ast.find_all(nodes.For) if isinstance(loop.iter, nodes.Name)}


def parse_prompt(text: str, origin: str) -> Prompt:
    """Validate a prompt file's text: schema, template syntax, declared == used variables, output model."""
    try:
        data = yaml.safe_load(text)
        spec = PromptFile.model_validate(data)
    except yaml.YAMLError as exc:
        raise PromptError(f"prompt file {origin}: invalid YAML: {yaml_problem(exc)}") from exc
    except ValidationError as exc:
        fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise PromptError(f"prompt file {origin}: {fields}") from exc
    used: set[str] = set()
    parsed = []
    for part in ("system", "user"):
        try:
            parsed.append(_ENV.parse(getattr(spec, part)))
            used |= meta.find_undeclared_variables(parsed[-1])
        except TemplateSyntaxError as exc:
            raise PromptError(f"prompt {spec.name!r} ({origin}) {part}: template syntax error line {exc.lineno}: {exc.message}") from exc
    declared = set(spec.input_variables)
    if used - declared:
        raise PromptError(f"prompt {spec.name!r} ({origin}): template uses undeclared variable(s) {sorted(used - declared)}")
    if declared - used:
        raise PromptError(f"prompt {spec.name!r} ({origin}): declared variable(s) never used {sorted(declared - used)}")
    if spec.output and spec.output not in OUTPUT_MODELS:
        raise PromptError(f"prompt {spec.name!r} ({origin}): unknown output model {spec.output!r}; known: {sorted(OUTPUT_MODELS)}")
    loops = _iterated(parsed)
    declared_types = spec.input_variables if isinstance(spec.input_variables, dict) else {}
    types = {name: declared_types.get(name) or ("list" if name in loops else "text") for name in spec.input_variables}
    clash = [n for n, t in declared_types.items() if t == "text" and n in loops]
    if clash:
        raise PromptError(f"prompt {spec.name!r} ({origin}): variable(s) {clash} declared text but iterated by a for loop")
    prompt = Prompt(
        name=spec.name, prompt_hash=hashlib.sha256(text.encode("utf-8")).hexdigest(), text=text,
        input_variables=tuple(spec.input_variables), output=spec.output, params=dict(spec.params),
        system=spec.system, user=spec.user, input_types=types,
    )
    return replace(prompt, examples=tuple(_check_example(prompt, i, ex, origin) for i, ex in enumerate(spec.examples)))


def _check_example(prompt: Prompt, i: int, example: PromptExample, origin: str) -> tuple[dict, str]:
    """(inputs, reply JSON) of a few-shot example, checked like a real call: the same variables, and an
    output the prompt's output model parses. PromptError naming `examples[i]`."""
    where = f"prompt {prompt.name!r} ({origin}) examples[{i}]"
    try:
        prompt.render(**example.inputs)
    except PromptError as exc:
        raise PromptError(f"{where}: {str(exc).split(': ', 1)[-1]}") from exc
    model = prompt.output_model()
    if model is not None:
        try:
            model.model_validate(example.output)
        except ValidationError as exc:
            fields = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise PromptError(f"{where}.output: {fields}") from exc
    return dict(example.inputs), json.dumps(example.output, ensure_ascii=False)


def load_prompt(path: Path) -> Prompt:
    prompt = parse_prompt(path.read_text(encoding="utf-8"), str(path))
    if prompt.name != path.stem:
        raise PromptError(f"prompt file {path}: name {prompt.name!r} must match the file name {path.stem!r}")
    return prompt


# The default prompts ship inside the package (ragloop.prompts, the repository's prompts/ folder): in a
# source checkout and in an installed wheel alike they sit beside this package.
PACKAGED_PROMPTS = Path(__file__).resolve().parent.parent / "prompts"
DEFAULT_PROMPTS_DIR = "prompts"


def load_prompt_set(project_dir: str | Path | None = DEFAULT_PROMPTS_DIR) -> dict[str, Prompt]:
    """The prompts a run uses: the packaged defaults, overridden file by file by the project's own.

    `project_dir` is the `prompts_dir` setting, relative to the working directory. The default name
    (`prompts`) may be absent: then the packaged prompts are used as they are, so `synth`/`eval` work
    from any directory. Any other directory must exist (PromptError naming it). A project file with the
    same name as a packaged one replaces it; new names are added. Raises PromptError on an invalid file.
    """
    prompts = load_prompts(PACKAGED_PROMPTS)
    directory = project_prompts_dir(project_dir)
    if directory is not None and not directory.is_dir():
        what = "not a directory" if directory.exists() else "not found"
        raise PromptError(f"prompts_dir: prompts directory {what}: {directory}")
    return prompts if directory is None else {**prompts, **load_prompts(directory)}


def project_prompts_dir(project_dir: str | Path | None = DEFAULT_PROMPTS_DIR) -> Path | None:
    """The project's own prompts directory that load_prompt_set overlays on the packaged defaults; None
    when there is none (unset, the default name absent, or the packaged folder itself)."""
    if project_dir is None:
        return None
    directory = Path(project_dir).expanduser()
    if not directory.is_dir() and str(project_dir) == DEFAULT_PROMPTS_DIR:
        return None
    if directory.resolve() == PACKAGED_PROMPTS:
        return None
    return directory


def prompt_sources(names: Iterable[str], project_dir: str | Path | None = DEFAULT_PROMPTS_DIR) -> dict[str, str]:
    """Where each prompt of load_prompt_set comes from: "project" (a file in the project's prompts
    directory) or "packaged" (the packaged default: there is no project directory, or it has no such file)."""
    directory = project_prompts_dir(project_dir)
    return {n: "project" if directory is not None and (directory / f"{n}{PROMPT_SUFFIX}").is_file() else "packaged"
            for n in sorted(names)}


def load_prompts(directory: Path) -> dict[str, Prompt]:
    """Every prompt in the directory by name; the first invalid file raises PromptError."""
    if not directory.is_dir():
        raise PromptError(f"prompts directory not found: {directory}")
    return {p.stem: load_prompt(p) for p in sorted(directory.glob(f"*{PROMPT_SUFFIX}"))}


def changed_prompts(current: dict[str, Prompt], recorded: dict[str, str]) -> list[dict]:
    """Prompts whose hash differs from the last recorded one (name -> hash), new ones included."""
    out = []
    for name, prompt in sorted(current.items()):
        last = recorded.get(name)
        if last != prompt.prompt_hash:
            out.append({"name": name, "prompt_hash": prompt.prompt_hash, "previous_hash": last,
                        "status": "new" if last is None else "changed"})
    return out
