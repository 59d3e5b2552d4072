#!/bin/bash

# Parameters
#SBATCH --account=my_project
#SBATCH --array=0-1%2
#SBATCH --constraint=a100
#SBATCH --cpus-per-task=16
#SBATCH --error=OUT/jobs/%A_%a/%A_%a_0_log.err
#SBATCH --gpus-per-node=1
#SBATCH --job-name=tb-fixture-full
#SBATCH --mail-type=FAIL
#SBATCH --mem=120GB
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --open-mode=append
#SBATCH --output=OUT/jobs/%A_%a/%A_%a_0_log.out
#SBATCH --partition=gpu
#SBATCH --qos=normal
#SBATCH --signal=USR2@180
#SBATCH --time=720
#SBATCH --wckey=submitit

# setup
module load cuda/12.4
export TRANSFERBENCH_CHECKPOINTS=/shared/checkpoints

# command
export SUBMITIT_EXECUTOR=slurm
srun --unbuffered --output OUT/jobs/%A_%a/%A_%a_%t_log.out --error OUT/jobs/%A_%a/%A_%a_%t_log.err PYTHON -u -m submitit.core._submit OUT/jobs/%j
