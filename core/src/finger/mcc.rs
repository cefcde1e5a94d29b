//! Minutia Cylinder-Code matcher (to be written).
