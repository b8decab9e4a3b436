"""torch and diffusers: generation, inpainting, editing. No Qt here; import lazily from the GUI."""
