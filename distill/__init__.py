"""Progressive adversarial distillation of SDXL (the SDXL-Lightning method, arXiv 2402.13929)."""
