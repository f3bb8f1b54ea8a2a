"""Human evaluation of codecs: a two-alternative forced-choice (2AFC) study.

    dpc study create IMAGES... --codecs jpeg420,webp --model ours=runs/m \\
        --bpp 0.125,0.25,0.5 --raters 10 --out mystudy
    dpc study serve mystudy                  # 127.0.0.1:8000; raters open invite links
    dpc study report mystudy --out mystudy/report

Modules: `study` (the study folder, its manifest and plan), `codecs` (finding
each codec's setting for a target rate), `create`, `db` (SQLite responses),
`server` (the Flask app on waitress), `analysis` (statistics), `report`,
`simulate` (simulated raters for examples and tests), `cli`.

Nothing here imports TensorFlow unless a learned model is coded.
"""
