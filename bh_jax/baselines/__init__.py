"""Baselines: classical (`hm`, `ssimh`) and learned (`learned`: U-net, CycleGAN,
the white-matter segmenter of the paper's Table 3)."""
