"""Training the flow prior on a target site's images.

`input_pipeline` (slices), `state` (optimizer, train state, steps), `checkpoint`
(orbax folders), `qc` (does the prior know the target's contrast?), `train` (the
resumable loop).
"""
