//! SynthParts: procedural images and annotations in the three source formats.
