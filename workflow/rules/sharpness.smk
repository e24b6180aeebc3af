# Sharpness of every run: all region/reference variants, per direction seed and aggregated.


rule run_sharpness:
    input:
        surfaces,
    output:
        "results/sharpness/{run}.json",
    log:
        "logs/run_sharpness/{run}.log",
    params:
        radius=config["sharpness"]["radius"],
    shell:
        "ascsharp run-sharpness {input} --radius {params.radius} --out {output} 2> {log}"
