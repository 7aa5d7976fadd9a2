"""No import cycle anywhere in the project's packages, lazy (function-level) imports included.

The graph is read from the source with ``ast``: an edge for every ``import`` of a project module, wherever it
stands (``if TYPE_CHECKING:`` blocks aside: they never run); ``from package import name`` points at
``package.name`` when that is a module, else at the package. A package importing its own sub-modules is normal; a
cycle is a path from a module back to itself.
"""
import ast
from pathlib import Path
from typing import Dict, List, Set

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ('spanet_pl', 'datamodules')


def module_files() -> Dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob('*.py')):
            parts = list(path.relative_to(REPO).with_suffix('').parts)
            if parts[-1] == '__init__':
                parts.pop()
            modules['.'.join(parts)] = path
    return modules


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` but those under ``if TYPE_CHECKING:``."""
    pending = [tree]
    while pending:
        node = pending.pop()
        yield node
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and 'TYPE_CHECKING' in ast.unparse(child.test):
                pending.extend(child.orelse)
            else:
                pending.append(child)


def imports_of(name: str, path: Path, modules: Dict[str, Path]) -> Set[str]:
    package = name if path.name == '__init__.py' else name.rpartition('.')[0]
    found = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                anchor = package.split('.')[:len(package.split('.')) - node.level + 1]
                base = '.'.join(anchor + ([base] if base else []))
            targets = [f'{base}.{alias.name}' if f'{base}.{alias.name}' in modules else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in modules:  # `import a.b.c` of a non-module attribute: its module
                target = target.rpartition('.')[0]
            if target and target != name:
                found.add(target)
    return found


def find_cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    cycles, state, stack = [], {}, []

    def visit(node):
        state[node] = 'open'
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 'open':
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 'done'

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def test_no_import_cycle():
    modules = module_files()
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    # parents import their children; the reverse edge (a child importing its own package) closes a cycle
    assert 'spanet_pl.models.registry' in graph['spanet_pl.models']
    assert find_cycles(graph) == []


def test_the_checker_sees_a_cycle():
    assert find_cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': set()}) == [['a', 'b', 'c', 'a']]
