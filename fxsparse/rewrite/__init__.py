"""Stage 2, rewrite: the analysed model rewritten: physically smaller (export), masked (reference), or laid out in capacity slots (layout)."""
