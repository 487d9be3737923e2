"""What a fine-tune did with a checkpoint's tensors (loaded, re-initialised, new, unused): logged at start and
written to `init_report.json` by both fine-tunes."""

from dataclasses import dataclass, field


@dataclass
class InitReport:
    """What `build_model` did with a checkpoint's tensors."""

    source: str
    loaded: list[str] = field(default_factory=list)
    reinitialized: list[tuple[str, list, list]] = field(default_factory=list)  # (name, checkpoint shape, new shape)
    newly_initialized: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "loaded": sorted(self.loaded),
            "reinitialized": [
                {"name": name, "checkpoint_shape": list(old), "model_shape": list(new)}
                for name, old, new in sorted(self.reinitialized)
            ],
            "newly_initialized": sorted(self.newly_initialized),
            "unused": sorted(self.unused),
        }

    def summary(self) -> str:
        lines = [f"Initialisation from {self.source}: {len(self.loaded)} tensors loaded"]
        if self.reinitialized:
            lines.append(f"  re-initialised (shape changed) ({len(self.reinitialized)}):")
            lines += [
                f"    {name}: checkpoint {tuple(old)} -> model {tuple(new)}"
                for name, old, new in sorted(self.reinitialized)
            ]
        if self.newly_initialized:
            prefixes = sorted({".".join(name.split(".")[:2]) for name in self.newly_initialized})
            lines.append(
                f"  newly initialised (not in the checkpoint) ({len(self.newly_initialized)}): "
                f"under {', '.join(prefixes)}"
            )
        if self.unused:
            lines.append(f"  unused checkpoint tensors ({len(self.unused)}): {', '.join(sorted(self.unused))}")
        return "\n".join(lines)
