"""``python -m spanet_pl {fit,validate,test,predict} --config FILE.yaml [--key value ...]``"""
import sys

from .errors import UserInputError


def main(args=None) -> None:
    from .cli import SpanetCLI
    try:
        SpanetCLI(args=args)
    except (UserInputError, FloatingPointError) as err:
        # Known bad input or a diverged run: the message says what happened; a traceback would bury it.
        print(f'spanet_pl: error: {err}', file=sys.stderr)
        sys.exit(2)


if __name__ == '__main__':
    main()
