"""TOML snippets shared by the tests' small suite manifests."""

LAYOUT_9 = "[[{0,2},{1}], [{0,2},{1}], [{0},{1},{2}], [{0},{1},{2}], [{0},{1},{2}]]"

#: the two members most small test suites use: AS and paper layout 9
AS_AND_LAYOUT_9 = f"""
[[models]]
name = "AS"
layout = "AS"

[[models]]
index = 9
layout = "{LAYOUT_9}"
"""
