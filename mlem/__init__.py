"""mlem: the multilevel Euler–Maruyama method for diffusion models (Jacot 2026)."""
