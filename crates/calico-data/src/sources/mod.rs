//! Source dataset readers (PACO-LVIS, PartImageNet, ADE20K-Part-234, MixedParts release JSON).
