"""The domain packages' seams: each takes what it uses (never the platform), imports only its own and lower layers,
has no import circle inside, and the library imports no adapter. grimp counts imports inside functions too."""

import importlib
import inspect
import pkgutil

import grimp
import pytest

# Low to high: a package may import its own layer and lower ones; a higher one reaches it only injected.
LAYERS = ["features", "streaming", "monitoring", "registry", "training", "serving", "jobs", "lineage"]
ABOVE_EVERY_DOMAIN = ["mlplat.platform", "mlplat.cli", "mlplat.demo", "mlplat.status"]
DOMAINS = ["monitoring", "registry", "training", "jobs", "lineage"]
ADAPTERS = ["mlplat_hub", "mlplat_magics", "mlplat_lab", "IPython", "tornado", "ipywidgets"]


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("mlplat", include_external_packages=True, cache_dir=None)  # a stale cache misleads


def modules_of(graph, package: str) -> set[str]:
    return {m for m in graph.modules if m == package or m.startswith(f"{package}.")}


@pytest.mark.parametrize("domain", DOMAINS)
def test_a_domain_imports_only_its_own_and_lower_layers(graph, domain):
    higher = [f"mlplat.{name}" for name in LAYERS[LAYERS.index(domain) + 1:]] + ABOVE_EVERY_DOMAIN
    upward = sorted((module, imported) for module in modules_of(graph, f"mlplat.{domain}")
                    for imported in graph.find_modules_directly_imported_by(module)
                    if any(imported == h or imported.startswith(f"{h}.") for h in higher))
    assert upward == []


@pytest.mark.parametrize("domain", DOMAINS)
def test_a_domain_has_no_import_circle_inside(graph, domain):
    inside = modules_of(graph, f"mlplat.{domain}")
    edges = {m: graph.find_modules_directly_imported_by(m) & inside for m in inside}
    done: set[str] = set()

    def circle_from(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return [*path[path.index(module):], module]
        if module in done:
            return None
        for imported in sorted(edges[module]):
            if found := circle_from(imported, [*path, module]):
                return found
        done.add(module)
        return None

    assert [circle for m in sorted(inside) if (circle := circle_from(m, []))] == []


def test_the_library_imports_no_adapter(graph):
    importers = {adapter: sorted(graph.find_modules_that_directly_import(adapter))
                 for adapter in ADAPTERS if adapter in graph.modules}
    assert {adapter: found for adapter, found in importers.items() if found} == {}


def domain_callables():
    """(name, function) of every function and method defined in the domain packages."""
    for domain in DOMAINS:
        package = importlib.import_module(f"mlplat.{domain}")
        found = pkgutil.walk_packages(getattr(package, "__path__", []), f"{package.__name__}.")
        for module in [package, *(importlib.import_module(info.name) for info in found)]:
            for value in vars(module).values():
                if getattr(value, "__module__", None) != module.__name__:
                    continue  # imported from elsewhere
                members = vars(value).items() if inspect.isclass(value) else [("", value)]
                yield from ((f"{module.__name__}.{value.__name__}.{name}".rstrip("."), member)
                            for name, member in members if inspect.isfunction(member))


def test_domains_take_what_they_use_never_the_platform():
    taking = sorted(name for name, function in domain_callables() if "platform" in inspect.signature(function).parameters)
    assert taking == []
