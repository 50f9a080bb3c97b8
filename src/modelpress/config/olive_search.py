"""How an Olive config's search is read: the keys Olive applies otherwise, and the parameters its search would add."""

from __future__ import annotations

from modelpress.config.collector import Collector
from modelpress.config.schema import PassConfig, SearchConfig
from modelpress.passes.catalog import CATALOG


OLIVE_SEARCH_DEFAULTS = {"seed": 1, "multivariate": True, "group": True}  # Olive 0.13's, where modelpress's differ


def olive_search(search: SearchConfig, engine_path: str, c: Collector) -> SearchConfig:
    """An Olive config's search: stop_when_goals_met, max_iter and max_time apply to a joint search alone, as Olive
    ignores them otherwise; the sampler keys left out that Olive defaults otherwise are said."""
    path = f"{engine_path}.search_strategy" if engine_path else "search_strategy"
    stops = {k: SearchConfig.model_fields[k].default for k in ("stop_when_goals_met", "max_iter", "max_time")
             if getattr(search, k) != SearchConfig.model_fields[k].default}
    if stops and search.execution_order == "pass-by-pass":
        c.warn(f"{path}: {', '.join(stops)} apply to a joint search only, and Olive ignores them for pass-by-pass; "
               "so does modelpress for an Olive config (write the config in modelpress's schema to use them)")
        search = search.model_copy(update=stops)
    if search.sampler in ("random", "tpe"):
        keys = ["seed"] + (["multivariate", "group"] if search.sampler == "tpe" else [])
        left = [f"{k} {getattr(search, k)} (Olive: {OLIVE_SEARCH_DEFAULTS[k]})" for k in keys
                if k not in search.model_fields_set]
        if left:
            c.note(f"{path}: keys left out take modelpress's defaults where Olive 0.13's differ: {', '.join(left)}. "
                   "Write them to sample as Olive does.")
    return search


def note_unsearched(passes: list[PassConfig], c: Collector) -> None:
    """Olive's search also tries the parameters a config leaves out over their search defaults; modelpress searches
    what the config lists: said, per pass, with the parameters it would search when listed. What the config set
    is read from the validated params (aliases such as lora_r and Olive's renamed keys resolved); a step written
    as alternatives is not noted."""
    for p in passes:
        if p.alternatives:
            continue
        written = p.params.model_fields_set | set(p.search_space)
        unset = [name for name in CATALOG[p.type].search_space() if name not in written]
        if unset:
            c.note(f"passes.{p.name}: Olive's search would also try {', '.join(unset)}, which the config leaves out; "
                   "modelpress searches only the values a config lists (write a list, or \"SEARCHABLE_VALUES\", "
                   "to search one)")
