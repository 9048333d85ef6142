"""Names shared by the writers and the readers of a run record (SPEC §6-8).

Every artifact path, tag key, metric prefix and tap name that one module writes and
another reads lives here once, so a rename cannot leave a reader behind.
"""

from __future__ import annotations

# --- taps (SPEC §6), in forward order -------------------------------------------------
# ``pred_intensity`` is not a SPEC tap but every backend returns it (the loss reads it).
TAP_NAMES = ("encoder_input", "amp_patches", "phase_patches", "object_patches", "object_canvas",
             "object_extracted", "exit_wave", "pred_intensity", "pred_amplitude", "pred_amplitude_counts")
# The taps every forward pass returns; ``object_canvas`` only when ``object_big``.
OPTIONAL_TAPS = ("object_canvas",)
# The tap the stitched canvas is built from.
STITCH_TAP = "object_extracted"
