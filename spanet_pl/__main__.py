"""``python -m spanet_pl {fit,validate,test,predict} --config FILE.yaml [--key value ...]``, or
``python -m spanet_pl export ...`` / ``python -m spanet_pl hub save ...`` (their own ``--help``)."""
import importlib
import sys
from typing import Optional

from .errors import UserInputError


def user_facing_error(err: BaseException) -> Optional[BaseException]:
    """The bad-input or divergence error behind ``err`` (jsonargparse wraps errors raised while instantiating)."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, (UserInputError, FloatingPointError)):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _close_process_group() -> None:
    """Shut DDP's process group down before the interpreter exits: a gloo group left open can abort the process
    at exit ("terminate called without an active exception") after a run that otherwise succeeded."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# subcommands beside LightningCLI's fit/validate/test/predict: module with a ``main(argv)``
TOOLS = {'export': 'spanet_pl.export', 'hub': 'spanet_pl.hub'}


def main(args=None):
    """Run the CLI on ``args`` (default ``sys.argv[1:]``) and return the ``SpanetCLI`` (its ``trainer`` holds the
    run's ``callback_metrics``), or what a tool subcommand returns; bad input exits with status 2 and one
    ``spanet_pl: error:`` line on stderr."""
    argv = sys.argv[1:] if args is None else list(args)
    try:
        if argv and argv[0] in TOOLS:
            return importlib.import_module(TOOLS[argv[0]]).main(argv[1:])
        from .cli import SpanetCLI
        cli = SpanetCLI(args=args)
        _close_process_group()
        return cli
    except Exception as err:
        known = user_facing_error(err)
        if known is None:
            raise
        # The message names what is wrong and where; a traceback would only bury it.
        message = str(known).strip()
        if 'Original Traceback' in message:  # re-raised from a DataLoader worker: keep the original last line
            message = message.splitlines()[-1].split(': ', 1)[-1]
        print(f'spanet_pl: error: {message}', file=sys.stderr)
        sys.exit(2)


if __name__ == '__main__':
    main()
