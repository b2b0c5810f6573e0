"""What a user deploys: a trial's files written again from the study, measured once more on
the files themselves, and described by a model card."""
