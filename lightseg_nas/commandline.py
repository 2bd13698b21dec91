"""The command line's machinery, shared by every command of cli.py: usage errors and user
mistakes as one line with exit code 2, a stop as one line with 130, and options generated
from the settings models (settings.py), so a setting is described once.
"""

from __future__ import annotations

import errno
import functools
import json
import sys
from enum import Enum
from typing import Optional

import typer
from typer.core import TyperGroup

from lightseg_nas.errors import FieldError, UserError
from lightseg_nas.settings import default_text

_USAGE_ERROR = next(base for base in typer.BadParameter.__mro__ if base.__name__ == "UsageError")


class OneLineErrors(TyperGroup):
    """Usage errors (an unknown option, a value not among the choices) end like every other
    user mistake: one line on stderr, exit code 2."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _USAGE_ERROR as error:
            if type(error).__name__ == "NoArgsIsHelpError":  # the bare command: show the help
                typer.echo(error.format_message())
                sys.exit(0)
            say(f"error: {error.format_message()}{command_hint(error)}")
            sys.exit(2)
        except (typer.Abort, KeyboardInterrupt):
            say("interrupted")
            sys.exit(130)
        except typer.Exit as stop:
            sys.exit(stop.exit_code)
        sys.exit(code if isinstance(code, int) else 0)


def say(line: str) -> None:
    """One line on stderr, on a line of its own: progress bars still on screen (a run that
    stopped mid-bar) are cleared first. Bars are drawn on terminals only (tqdm's
    ``disable=None``), so logs and pipes get the line alone."""
    from tqdm import tqdm

    for bar in list(getattr(tqdm, "_instances", ())):
        bar.leave = False
        bar.close()
    typer.echo(line, err=True)


def command_hint(error) -> str:
    context = getattr(error, "ctx", None)
    return f" (see {context.command_path} --help)" if context is not None else ""



def value(choice):
    return None if choice is None else choice.value


def set_threads(threads: Optional[int]) -> None:
    """--threads: CPU threads for this command (default: the cores this process may use)."""
    from lightseg_nas.checks import usable_cores
    from lightseg_nas.speed import use_threads

    if threads is not None and not 1 <= threads <= 1024:
        raise UserError(f"--threads must be from 1 to 1024, got {threads}")
    use_threads(threads or usable_cores())


def check_int(value: Optional[int], name: str, low: int, high: int) -> None:
    if value is not None and not low <= value <= high:
        raise UserError(f"{name} must be from {low:,} to {high:,}, got {value:,}")


def flag(field: str) -> str:
    return field if field.startswith("-") else "--" + field.replace("_", "-")


def in_cli_terms(error: UserError) -> str:
    """The library names settings as fields (encoder_epochs); the command line as options."""
    return error.render(flag) if isinstance(error, FieldError) else str(error)


def is_out_of_memory(error: BaseException) -> bool:
    """PyTorch's allocators raise RuntimeError (a subclass, on CUDA) when memory runs out."""
    text = str(error)
    return "can't allocate memory" in text or "out of memory" in text.lower() or type(error).__name__ == "OutOfMemoryError"


def user_errors(command):
    """Turn UserError into 'error: ...' and exit code 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as error:
            say(f"error: {in_cli_terms(error)}")
            raise typer.Exit(2) from None
        except RecursionError:
            say("error: input nested too deeply to read")
            raise typer.Exit(2) from None
        except ValueError as error:
            if "integer string conversion" not in str(error):
                raise
            say("error: a number with too many digits to be a setting")
            raise typer.Exit(2) from None
        except OSError as error:  # the environment: a full disk, a read-only or vanished folder
            where = f"{error.filename}: " if error.filename else ""
            reason = "no space left on the device" if error.errno in (errno.ENOSPC, errno.EDQUOT) else (error.strerror or str(error))
            say(f"error: {where}{reason}; nothing half-written is kept (free the space or choose another place, then run again)")
            raise typer.Exit(2) from None
        except (MemoryError, RuntimeError) as error:
            if not isinstance(error, MemoryError) and not is_out_of_memory(error):
                raise
            say("error: out of memory; nothing half-written is kept (try a smaller --size or --batch-size, or fewer --threads)")
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            say("interrupted: nothing half-written is kept; run the same command (with --resume where it has one) to continue")
            raise typer.Exit(130) from None

    return wrapper


KD_OPTIONS = ("kd_weight", "kd_temperature", "cwd_weight")


def refuse_kd_without_teacher(teacher, **given) -> None:
    """Distillation options mean nothing without a teacher: refused, not silently recorded."""
    named = [name for name in KD_OPTIONS if given.get(name) is not None]
    if teacher is None and named:
        raise FieldError((named[0], "teacher"), "{0} goes with {1} (there is nothing to distil from without one)")


def print_json(data) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True))


class SettingsOptions:
    """A command parameter that stands for one ``--option`` per named field of a settings
    model (settings.py): the flag, the type, the choices, the help and the default shown are
    read from the field, so a setting is described once. ``help`` and ``show_default`` give
    a command's own wording where a field means something more specific there. The command
    receives the given values as one dict (None: not given; choices as plain strings)."""

    def __init__(self, model, names, help: Optional[dict] = None, show_default: Optional[dict] = None):
        self.model, self.names, self.help, self.show_default = model, tuple(names), help or {}, show_default or {}

    def parameters(self) -> list:
        import inspect
        import typing

        made = []
        for name in self.names:
            field = self.model.model_fields[name]
            kind = next((a for a in typing.get_args(field.annotation) if a is not type(None)), field.annotation) if typing.get_origin(field.annotation) is typing.Union else field.annotation
            if typing.get_origin(kind) is typing.Literal:
                kind = Enum(name.title().replace("_", ""), {value: value for value in typing.get_args(kind)}, type=str)
            flag = "--" + name.replace("_", "-")
            declarations = (f"{flag}/--no-{name.replace('_', '-')}",) if kind is bool else (flag,)
            shown = self.show_default.get(name, default_text(self.model, name) if field.default is not None else False)
            option = typer.Option(None, *declarations, help=self.help.get(name, field.description), show_default=shown)
            made.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=Optional[kind]))
        return made


def with_settings(command):
    """Expand the command's SettingsOptions parameters into their options (for typer), and
    hand the command each group's values as a dict."""
    import inspect

    signature = inspect.signature(command)
    groups = {name: p.default for name, p in signature.parameters.items() if isinstance(p.default, SettingsOptions)}
    parameters = []
    for name, parameter in signature.parameters.items():
        if name in groups:
            parameters += groups[name].parameters()
        else:
            parameters.append(parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY))

    @functools.wraps(command)
    def wrapper(**given):
        for group, options in groups.items():
            given[group] = {field: value(given.pop(field)) if isinstance(given.get(field), Enum) else given.pop(field) for field in options.names}
        return command(**given)

    wrapper.__signature__ = signature.replace(parameters=parameters)
    return wrapper
