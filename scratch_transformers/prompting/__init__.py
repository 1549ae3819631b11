"""Prompt learning: PET / iPET (Schick & Schütze, arXiv 2001.07676) and soft prompt tuning
(Lester et al., arXiv 2104.08691), on a masked LM the library pretrains itself (``corpus``)."""
