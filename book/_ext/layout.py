"""Page layout fixes the theme lacks: a wide table scrolls inside its own box instead of
running past the content column (``static/layout.css``)."""
from pathlib import Path


def _add_static(app, config):
    config.html_static_path.append(str(Path(__file__).parent / "static"))


def setup(app):
    app.connect("config-inited", _add_static)
    app.add_css_file("layout.css")
    return {"parallel_read_safe": True, "parallel_write_safe": True}
