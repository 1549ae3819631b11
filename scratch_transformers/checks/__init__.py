"""Registry entries: sample inputs of every forward/backward pair, mirroring the method packages."""
