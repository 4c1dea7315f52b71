"""CLI sub-commands beyond the core: each module defines `register(app)` and keeps heavy imports inside commands."""
