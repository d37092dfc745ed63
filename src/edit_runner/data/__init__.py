"""Edit data: the EditRecord type, dataset loaders, selection and the shipped demo facts."""
